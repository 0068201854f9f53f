# Shared by tests/lab/run.sh and bench/run.sh (source it; bash).
#
# netns_teardown DIR: stops only what a run started and removes its namespaces. DIR/netns lists
# the namespaces the run created, DIR/pids the PIDs it started (first word of each line). A
# recorded PID is signalled only while it still lives in one of those namespaces, so a reused
# PID is never hit: TERM, up to 3 s to exit, then KILL. Anything else still inside those
# namespaces is killed by PID; then the namespaces are deleted.
netns_teardown() {
  local dir=$1 pid ns n inodes=" " mine=()
  [ -f "$dir/netns" ] || return 0
  while read -r ns; do
    [ -n "$ns" ] && inodes+="$(stat -L -c %i "/run/netns/$ns" 2>/dev/null) "
  done < "$dir/netns"
  if [ -f "$dir/pids" ]; then
    while read -r pid _; do
      [ -n "$pid" ] || continue
      n=$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null) || continue
      case $inodes in *" $n "*) mine+=("$pid") ;; esac
    done < "$dir/pids"
  fi
  for pid in "${mine[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for n in $(seq 1 30); do
    local alive=0
    for pid in "${mine[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${mine[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  while read -r ns; do
    [ -n "$ns" ] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  done < "$dir/netns"
  sleep 0.2
  while read -r ns; do
    [ -n "$ns" ] && ip netns del "$ns" 2>/dev/null
  done < "$dir/netns"
  return 0
}
