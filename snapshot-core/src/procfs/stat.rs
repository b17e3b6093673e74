//! `/proc/<pid>/stat`: one line of space-separated fields (proc(5)).
//!
//! Field 2 is the command name in parentheses, and it may itself contain
//! spaces and parentheses: the numbered fields are counted from after the
//! line's LAST `)`, never by splitting the whole line.

/// The fields after the command name: the first is field 3 (`state`).
fn fields_after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace())
}

/// Field `n` (1-based, as proc(5) numbers them; `n >= 3`) as a number.
pub(crate) fn numeric_field(stat: &str, n: usize) -> Option<u64> {
    fields_after_comm(stat)?
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The start time of a process (field 22), in clock ticks since boot.
/// Together with the pid it names one process: a recycled pid has another.
pub(crate) fn parse_start_ticks(stat: &str) -> Option<u64> {
    numeric_field(stat, 22)
}

/// The state letter of a stat line (field 3: `R`, `S`, `Z`, ...).
pub(crate) fn parse_state(stat: &str) -> Option<char> {
    let state = fields_after_comm(stat)?.next()?;
    let mut chars = state.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// Whether process `pid` exists and has not exited: a zombie (`Z`, exited
/// but not yet reaped by its parent) or a dead task (`X`) has left its
/// cgroup already, so it is no part of what a freeze must stop.
pub(crate) fn is_live(pid: u32) -> bool {
    read(pid)
        .as_deref()
        .and_then(parse_state)
        .is_some_and(|s| s != 'Z' && s != 'X')
}

/// The start time of process `pid` in clock ticks since boot, `None` when it
/// does not exist (any more) or its stat cannot be read.
pub(crate) fn process_start_ticks(pid: u32) -> Option<u64> {
    parse_start_ticks(&read(pid)?)
}

/// The CPU time process `pid` has used (utime + stime, fields 14 and 15),
/// in clock ticks.
#[cfg(test)]
pub(crate) fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = read(pid)?;
    Some(numeric_field(&stat, 14)? + numeric_field(&stat, 15)?)
}

fn read(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_count_from_the_last_parenthesis() {
        // A command name with spaces and parentheses, even a ") 9 9 ".
        let stat = "4242 (my (odd) 9 9 ) name) S 1 4242 4242 0 -1 4194560 \
                    100 0 0 0 7 3 0 0 20 0 1 0 123456 1000 100 0 0";
        assert_eq!(parse_start_ticks(stat), Some(123_456));
        assert_eq!(numeric_field(stat, 14), Some(7));
        assert_eq!(numeric_field(stat, 15), Some(3));
        assert_eq!(numeric_field(stat, 4), Some(1));
        assert_eq!(numeric_field(stat, 2), None);
        assert_eq!(parse_start_ticks("4242 (no closing paren S 1"), None);
        assert_eq!(parse_start_ticks("4242 (short) S 1 2"), None);
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_state("7 (a) Z) Z 1"), Some('Z'));
        assert_eq!(parse_state("7 (a) "), None);
    }

    #[test]
    fn a_zombie_is_not_live() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: once it has exited it stays a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read(pid).as_deref().and_then(parse_state) != Some('Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "child never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!is_live(pid), "a zombie counted as live");
        child.wait().unwrap();
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let start = process_start_ticks(me).unwrap();
        assert_eq!(process_start_ticks(me), Some(start), "stable");
        assert!(process_cpu_ticks(me).is_some());
        // pid_max is at most 2^22: this pid never exists.
        assert_eq!(process_start_ticks(u32::MAX), None);
        assert!(is_live(me));
        assert!(!is_live(u32::MAX));
    }
}
