# Shell helpers shared by the rig scripts (sourced, not run).

# A pid from a pid file, if that process still runs the expected program
# (a stale pid file may name a recycled pid).
live_pid() {
  local file=$1 want=$2 pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$want" || return 1
  echo "$pid"
}
