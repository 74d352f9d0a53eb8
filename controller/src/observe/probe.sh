set -f
n=0
OIFS=$IFS
# Output is kept and written once at the end: one write, one SSH packet,
# instead of one per line through sshd.
OUT=
o() { n=$((n+1)); OUT="$OUT$*
"; }
# fd scan: $1 = wanted inodes (" i i "), rest = /proc/PID/fd dirs. One ls for all.
scan() {
  want=$1; shift
  cur=${1#/proc/}; cur=${cur%/fd}
  out=$(ls -ln "$@" 2>/dev/null)
  while IFS= read -r line; do
    case $line in
    /proc/*/fd:) cur=${line#/proc/}; cur=${cur%/fd:} ;;
    *'socket:['*']')
      i=${line##*socket:\[}; i=${i%]}
      case $want in *" $i "*)
        c=; { read -r c < "/proc/$cur/comm"; } 2>/dev/null
        fd=${line% -> *}; fd=${fd##* }
        o "sock $cur $i $fd $c"
        OWN="$OWN $i " ;;
      esac ;;
    esac
  done <<SCAN_EOF
$out
SCAN_EOF
}
o 'tend-probe 1'
v=; { read -r v < /proc/sys/kernel/hostname; } 2>/dev/null; o "hostname $v"
BOOT=; { read -r BOOT < /proc/sys/kernel/random/boot_id; } 2>/dev/null; o "boot_id $BOOT"
mt=-; ma=-
{ while read -r k v u; do
  case $k in MemTotal:) mt=$v ;; MemAvailable:) ma=$v; break ;; esac
done < /proc/meminfo; } 2>/dev/null
o "meminfo $mt $ma"
CG=none
if { read -r v < /sys/fs/cgroup/cgroup.controllers; } 2>/dev/null; then
  case " $v " in *" memory "*) CG=v2 ;; esac
fi
[ $CG = none ] && [ -e /sys/fs/cgroup/memory/cgroup.procs ] && CG=v1
# Report the mode tend can use: a hierarchy it cannot write (not root) cannot
# enforce limits, so the plan must not ask for restarts to fix them.
CGW=$CG
case $CG in
  v2) [ -w /sys/fs/cgroup/tend ] || [ -w /sys/fs/cgroup ] || CGW=none ;;
  v1) [ -w /sys/fs/cgroup/memory/tend ] || [ -w /sys/fs/cgroup/memory ] || CGW=none ;;
esac
o "cgroup $CGW"
# A record's lines, ready to print (RO, RN lines), and the fields the probe uses.
readrec() {
  pid=; cg=; ports=; rt=; ver=; rst=; rboot=; line=; RO=; RN=0
  while IFS= read -r line || [ -n "$line" ]; do
    RO="$RO| $line
"; RN=$((RN+1))
    case $line in
    pid=*) pid=${line#pid=} ;;
    cgroup=*) cg=${line#cgroup=} ;;
    ports=*) ports=${line#ports=} ;;
    runtime=*) rt=${line#runtime=} ;;
    version=*) ver=${line#version=} ;;
    start_time=*) rst=${line#start_time=} ;;
    boot_id=*) rboot=${line#boot_id=} ;;
    esac
    line=
  done < "$1"
  case $pid in ''|*[!0-9]*) pid= ;; esac
}
# The recorded process is gone: another boot, no such pid, or another
# process under it.
stale() {
  [ "$rboot" = "$BOOT" ] || return 0
  { read -r s < "/proc/$pid/stat"; } 2>/dev/null || return 0
  set -- ${s##*)}
  [ $# -ge 20 ] && [ "${20}" = "$rst" ] && return 1
  return 0
}
# A container that podman restarted (its restart policy; after a boot,
# podman-restart.service) runs under a new pid: write it into the record, as
# the systemd unit's ExecStartPost does. Only when the recorded pid is dead,
# so a no-op probe never runs podman; only under a free host lock, so no
# apply is replacing the container meanwhile.
adopt() { # service record-file
  command -v podman >/dev/null 2>&1 || return 1
  (
    an=$1; af=$2
    if [ -f "$ROOT/containers.conf" ]; then export CONTAINERS_CONF="$ROOT/containers.conf"; fi
    exec 9>>"$ROOT/lock"
    flock -n 9 || exit 1
    v=$(podman inspect --format '{{.State.Pid}} {{index .Config.Labels "tend.version"}}' "tend-$an" </dev/null 2>/dev/null 9>&-) || exit 1
    p=${v%% *}
    case $p in ''|0|*[!0-9]*) exit 1 ;; esac
    [ "${v#* }" = "$ver" ] || exit 1
    { read -r s < "/proc/$p/stat"; } 2>/dev/null || exit 1
    set -- ${s##*)}
    [ $# -ge 20 ] || exit 1
    st=${20}
    c=; c2=
    while IFS=: read -r a b d; do
      case $b in memory) c=$d ;; '') [ "$a" = 0 ] && c2=$d ;; esac
    done < "/proc/$p/cgroup"
    c=${c:-$c2}
    t="$ROOT/records/.tmp-adopt-$an.rec"
    grep -v -e '^pid=' -e '^start_time=' -e '^boot_id=' -e '^cgroup=' "$af" > "$t" || exit 1
    {
      if [ -n "$c" ]; then printf 'cgroup=%s\n' "$c"; fi
      printf 'pid=%s\nstart_time=%s\nboot_id=%s\n' "$p" "$st" "$BOOT"
    } >> "$t" && mv -f "$t" "$af"
  ) 2>/dev/null
}
# The record's cgroup: its memory line (MEM) and its processes (procs).
cgread() {
  MEM=; procs=; d=
  case $cg in /*) ;; *) cg= ;; esac
  case $cg in *%*|*/../*|*/..) cg= ;; esac
  [ -n "$cg" ] || return 0
  case $CG in v2) d=/sys/fs/cgroup$cg ;; v1) d=/sys/fs/cgroup/memory$cg ;; esac
  if [ -n "$d" ] && [ -d "$d" ]; then
    if [ $CG = v2 ]; then a=memory.current; b=memory.max; e=memory.events
    else a=memory.usage_in_bytes; b=memory.limit_in_bytes; e=memory.oom_control; fi
    cur=-; max=-; oom=-
    { read -r cur < "$d/$a"; } 2>/dev/null
    { read -r max < "$d/$b"; } 2>/dev/null
    { while read -r k v; do [ "$k" = oom_kill ] && { oom=$v; break; }; done < "$d/$e"; } 2>/dev/null
    MEM="memory $cur $max $oom"
  fi
  # Liveness of a unit: any hierarchy that has its cgroup.
  for d in "$d" /sys/fs/cgroup/systemd$cg /sys/fs/cgroup/unified$cg /sys/fs/cgroup$cg; do
    [ -n "$d" ] && [ -r "$d/cgroup.procs" ] || continue
    procs=' '
    { while read -r p; do procs="$procs$p "; done < "$d/cgroup.procs"; } 2>/dev/null
    break
  done
}
# The recorded process is in the service's own cgroup, this boot: alive
# (an exited one is not listed) and ours, without reading its stat.
owned() {
  [ -n "$pid" ] && [ "$rboot" = "$BOOT" ] || return 1
  case $procs in *" $pid "*) return 0 ;; esac
  return 1
}
SCAN=
set +f
for f in "$ROOT"/records/*.rec; do
  set -f
  [ -f "$f" ] || continue
  nm=${f##*/}; nm=${nm%.rec}
  readrec "$f"; cgread
  if [ "$rt" = podman ] && [ -n "$pid" ] && ! owned && stale && adopt "$nm" "$f"; then
    readrec "$f"; cgread
  fi
  o "record $nm"
  OUT=$OUT$RO; n=$((n+RN))
  o endrecord
  IFS=,; for p in $ports; do WATCH="$WATCH $p "; done; IFS=$OIFS
  alive=
  if owned; then
    alive=$pid
  elif [ -n "$pid" ] && { read -r s < "/proc/$pid/stat"; } 2>/dev/null; then
    set -- ${s##*)}
    if [ $# -ge 20 ]; then st=$1; shift 19; o "proc $pid $st $1"; alive=$pid; fi
  fi
  if [ -n "$MEM" ]; then o "$MEM"; fi
  if [ -n "$procs" ]; then o "procs$procs"; SCAN="$SCAN$procs"; elif [ -n "$alive" ]; then SCAN="$SCAN $alive "; fi
done
set -f
L=; LI=
lst() { # port inode
  case $1$2 in ''|*[!0-9]*) return ;; esac
  o "listen $1 $2"; L="$L $1:$2"; LI="$LI $2 "
}
OWN=
# Fast path: the controller names the listening sockets services held at
# the last probe (port:inode:pid:fd). When each is still open in a live
# service process, nothing can have taken those ports: skip the table walk,
# which reads the kernel's whole connection hash.
KNOWN_OK=
if [ -n "$KNOWN" ]; then
  KNOWN_OK=1
  for k in $KNOWN; do
    IFS=:; set -- $k; IFS=$OIFS
    case $SCAN in *" $3 "*) ;; *) KNOWN_OK=; break ;; esac
    i=
    { while read -r a b; do [ "$a" = ino: ] && { i=$b; break; }; done < "/proc/$3/fdinfo/$4"; } 2>/dev/null
    [ "$i" = "$2" ] || { KNOWN_OK=; break; }
  done
fi
if [ -n "$KNOWN_OK" ]; then
  o "listeners known"
  for k in $KNOWN; do
    IFS=:; set -- $k; IFS=$OIFS
    c=; { read -r c < "/proc/$3/comm"; } 2>/dev/null
    lst "$1" "$2"; o "sock $3 $2 $4 $c"; OWN="$OWN $2 "
  done
  LI=
else
  # sock_diag asks the kernel for listeners only (one exec); /proc/net/tcp
  # needs no tool but walks the connection hash. Chosen by the controller.
  if [ "$LISTEN_SRC" = auto ] && v=$(ss -Hltne 2>/dev/null); then
    while read -r st rq sq la rest; do
      i=${rest#*ino:}; lst "${la##*:}" "${i%% *}"
    done <<SS_EOF
$v
SS_EOF
  else
    for f in /proc/net/tcp /proc/net/tcp6; do
      [ -r $f ] || continue
      while read -r sl la ra st q tm rt uid to ino rest; do
        # Listeners come first; stop before walking established connections.
        case $st in 0A) ;; st) continue ;; *) break ;; esac
        p=${la##*:}
        case $p in ''|*[!0-9A-Fa-f]*) continue ;; esac
        lst $((0x$p)) "$ino"
      done < $f
    done
  fi
fi
# Socket inodes from fdinfo: builtins only. Kernels before 5.14 lack its ino
# line: then one ls for all.
FDLS=
if [ -n "$LI" ]; then
  set +f
  for p in $SCAN; do
    c=
    for f in /proc/$p/fd/*; do
      [ -S "$f" ] || continue
      i=
      { while read -r k v; do [ "$k" = ino: ] && { i=$v; break; }; done < "/proc/$p/fdinfo/${f##*/}"; } 2>/dev/null
      [ -n "$i" ] || { FDLS=1; break 2; }
      case $LI in *" $i "*)
        [ -n "$c" ] || { { read -r c < "/proc/$p/comm"; } 2>/dev/null; }
        o "sock $p $i ${f##*/} $c"; OWN="$OWN $i " ;;
      esac
    done
  done
  set -f
fi
if [ -n "$FDLS" ]; then
  set --
  for p in $SCAN; do set -- "$@" "/proc/$p/fd"; done
  scan "$LI" "$@"
fi
# Rare path: a declared port held by a socket no service owns. Find who.
NEED=
for e in $L; do
  case $WATCH in *" ${e%%:*} "*)
    case $OWN in *" ${e#*:} "*) ;; *) NEED="$NEED ${e#*:} " ;; esac ;;
  esac
done
if [ -n "$NEED" ]; then
  set +f; set -- /proc/[0-9]*/fd; set -f
  scan "$NEED" "$@"
fi
# Health commands: in the release directory, with the service's env, bounded.
check() { # service dir seconds argv...
  nm=$1; d=$2; t=$3; shift 3
  rc=-
  if [ -f "$ROOT/records/$nm.rec" ] && [ -d "$d" ]; then
    if command -v timeout >/dev/null 2>&1; then set -- timeout "$t" "$@"; fi
    (
      cd "$d" || exit 126
      e=$ROOT/env/$nm.env
      if [ -r "$e" ]; then set -a; . "$e"; set +a; fi
      exec "$@"
    ) </dev/null >/dev/null 2>&1
    rc=$?
  fi
  o "check $nm $rc"
}
