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
fn numeric_field(stat: &str, n: usize) -> Option<u64> {
    fields_after_comm(stat)?
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The start time of a process (field 22), in clock ticks since boot.
/// Together with the pid it names one process: a recycled pid has another.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    numeric_field(stat, 22)
}

/// The start time of process `pid` in clock ticks since boot, `None` when it
/// does not exist (any more) or its stat cannot be read.
// The status store's worker check switches from its own copy to this one
// when it moves; until then only the tests use it.
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
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let start = process_start_ticks(me).unwrap();
        assert_eq!(process_start_ticks(me), Some(start), "stable");
        assert!(process_cpu_ticks(me).is_some());
        // pid_max is at most 2^22: this pid never exists.
        assert_eq!(process_start_ticks(u32::MAX), None);
    }
}
