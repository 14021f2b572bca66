#!/usr/bin/env bash
# End-to-end scenario: podman (rootful, overlay driver) with a mount_program, in a private
# mount namespace with private storage under a temporary directory.
#
#   podman-scenario.sh TMPDIR PROGRAM
#
# TMPDIR  an empty directory that holds everything (storage, configs, logs); the caller
#         removes it.
# PROGRAM the mount_program (an absolute path: /usr/bin/fuse-overlayfs, .../bin/ts-overlayfs),
#         or `kernel` for podman's own kernel overlay mounts (no mount_program).
#
# Podman never calls PROGRAM directly: it calls TMPDIR/bin/mount-program, a wrapper that logs
# each call (argv, cwd, uid, environment, exit status, stderr) under TMPDIR/mp/ and then runs
# PROGRAM. TMPDIR/bin/fusermount3 logs the unmounts the same way.
#
# Output, for the test that runs this (test/e2e/podman.test.ts), one block per step:
#   === STEP name
#   ... the commands run and what they printed, the mount program calls of the step ...
#   RESULT name ok|fail one-line detail
# and `NS <inode>` (the mount namespace, so that the caller can end what is left in it).
# Exit status 0 whatever the results, non-zero only when the scenario could not run at all.
set -uo pipefail

if [ "${_PODMAN_SCENARIO_INNER:-}" != 1 ]; then
  if [ $# -ne 2 ] || [ ! -d "$1" ]; then
    echo "usage: $0 TMPDIR PROGRAM|kernel" >&2
    exit 2
  fi
  # A private mount namespace: podman's mounts never show outside, and die with it.
  exec unshare -m --propagation private env _PODMAN_SCENARIO_INNER=1 bash "$0" "$@"
fi

T=$(realpath "$1")
PROG=$2
# Each podman command gets at most PODMAN_STEP_TIMEOUT seconds, and all together at most
# PODMAN_BUDGET: past it, podman commands fail at once ("time budget spent"), so a hang cannot
# take the scenario much past the budget.
TMO=${PODMAN_STEP_TIMEOUT:-90}
DEADLINE=$((SECONDS + ${PODMAN_BUDGET:-200}))
IMG=localhost/e2e-busybox:latest
echo "NS $(stat -L -c %i /proc/self/ns/mnt)"

# --------------------------------------------------------------------------------------------
# Isolation: nothing written outside TMPDIR. runc keeps its state in /run/runc and
# containers/image its blob cache in /var/lib/containers/cache, whatever storage.conf says:
# /run gets a tmpfs and /var/lib a kernel overlay whose upper layer is in TMPDIR.
mkdir -p "$T/bin" "$T/mp" "$T/logs" "$T/graph" "$T/runroot" "$T/tmp" "$T/vartmp" "$T/net" \
  "$T/varlib/u" "$T/varlib/w" "$T/ctx/d" "$T/rootfs"
mount -t tmpfs -o mode=755 tmpfs /run || { echo "cannot mount a tmpfs on /run" >&2; exit 3; }
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$T/varlib/u,workdir=$T/varlib/w" /var/lib ||
  { echo "cannot mount an overlay on /var/lib" >&2; exit 3; }
export TMPDIR=$T/vartmp

# --------------------------------------------------------------------------------------------
# The wrappers.
cat >"$T/bin/mount-program" <<EOF
#!/usr/bin/env bash
# Logs how podman called the mount program, then runs it.
n=\$(date +%s%N)
log=$T/mp/calls.log
{
  printf 'CALL %s pid=%s uid=%s cwd=%s argv:' "\$n" "\$\$" "\$(id -u)" "\$PWD"
  printf " '%s'" "\$0" "\$@"
  echo
} >>"\$log"
env | sort >"$T/mp/\$n.env"
start=\$(date +%s%N)
# stderr goes to podman as it would without the wrapper, and to a file, through a fifo that only
# the program holds (no stray descriptor, unlike a process substitution): tee, which holds
# podman's stderr pipe, sees EOF once every holder of the program's stderr (a daemon that kept
# it, say) has closed it, exactly when podman would without the wrapper.
fifo=$T/mp/\$n.fifo
mkfifo "\$fifo"
tee "$T/mp/\$n.stderr" <"\$fifo" >&2 &
tee_pid=\$!
"$PROG" "\$@" 2>"\$fifo"
rc=\$?
ms=\$(( (\$(date +%s%N) - start) / 1000000 ))
# Who still holds the program's stderr (podman would wait for them).
held=''
for pid in \$(find /proc/[0-9]*/fd -maxdepth 1 -lname "\$fifo" 2>/dev/null | cut -d/ -f3 | sort -u); do
  [ "\$pid" = "\$tee_pid" ] || held="\$held \$pid(\$(tr '\\0' ' ' <"/proc/\$pid/cmdline" 2>/dev/null | cut -c1-80))"
done
echo "EXIT \$n rc=\$rc ms=\$ms\${held:+ STDERR STILL HELD BY:\$held}" >>"\$log"
exit \$rc
EOF
cat >"$T/bin/fusermount3" <<EOF
#!/usr/bin/env bash
/usr/bin/fusermount3 "\$@"
rc=\$?
{ printf 'UNMOUNT %s rc=%s argv: fusermount3' "\$(date +%s%N)" "\$rc"; printf " '%s'" "\$@"; echo; } >>"$T/mp/calls.log"
exit \$rc
EOF
chmod +x "$T/bin/mount-program" "$T/bin/fusermount3"
touch "$T/mp/calls.log"
export PATH=$T/bin:$PATH

# --------------------------------------------------------------------------------------------
# Configuration (see the machine notes in test/e2e/podman.test.ts).
{
  echo '[storage]'
  echo 'driver = "overlay"'
  echo "graphroot = \"$T/graph\""
  echo "runroot = \"$T/runroot\""
  if [ "$PROG" != kernel ]; then
    echo '[storage.options.overlay]'
    echo "mount_program = \"$T/bin/mount-program\""
  fi
} >"$T/storage.conf"
cat >"$T/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "none"
log_driver = "k8s-file"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/events.log"
runtime = "runc"
tmp_dir = "$T/tmp"
image_copy_tmp_dir = "$T/vartmp"
[network]
network_config_dir = "$T/net"
EOF
export CONTAINERS_STORAGE_CONF=$T/storage.conf CONTAINERS_CONF=$T/containers.conf
unset CONTAINERS_REGISTRIES_CONF XDG_RUNTIME_DIR

# --------------------------------------------------------------------------------------------
# Helpers.

# pm ARGS...: podman with a time limit.
limit() {
  local left=$((DEADLINE - SECONDS))
  ((left > TMO)) && left=$TMO
  echo "$left"
}
pm() {
  local t
  t=$(limit)
  if ((t <= 0)); then
    echo "podman $1: not run, the scenario's time budget is spent" >&2
    return 124
  fi
  timeout -k 5 "$t" podman "$@"
}

# run CMD...: runs, shows the command and its output (stdout+stderr) in the step's block,
# keeps stdout in $OUT and the status in $RC.
OUT=''
RC=0
# q TEXT: TEXT quoted on one line, newlines as \n.
q() { printf "'%s'" "$(printf '%s' "$1" | sed ':a;N;$!ba;s/\n/\\n/g')"; }
run() {
  printf '$'
  printf ' %q' "$@"
  echo
  local errf=$T/logs/stderr.$$
  OUT=$("$@" 2>"$errf")
  RC=$?
  [ -n "$OUT" ] && printf '%s\n' "$OUT" | sed 's/^/  | /'
  [ -s "$errf" ] && sed 's/^/  ! /' "$errf"
  [ "$RC" = 0 ] || echo "  (exit status $RC)"
  return 0
}

CURRENT=''
STEP_FAILS=()
OPAQUE_FAILS=()
OPAQUE_CHECKED=0
STEP_LOG_LINE=0
begin() {
  CURRENT=$1
  STEP_FAILS=()
  OPAQUE_FAILS=()
  OPAQUE_CHECKED=0
  STEP_LOG_LINE=$(wc -l <"$T/mp/calls.log")
  echo "=== STEP $CURRENT"
}
# fail_if COND-DESCRIPTION: records a failed check of the current step.
failed() { STEP_FAILS+=("$*"); echo "  CHECK FAILED: $*"; }
# The checks of a directory removed and made again (opaque in the upper layer) are reported
# apart, as the result `STEP/opaque-dir`: fuse-overlayfs 1.10 (Debian 12) still finds the
# old lower entries by name there (containers/fuse-overlayfs#324), and nothing else.
opaque_failed() { OPAQUE_FAILS+=("$*"); echo "  CHECK FAILED (opaque-dir): $*"; }
# expect_opaque what EXPECTED ACTUAL
expect_opaque() {
  OPAQUE_CHECKED=1
  [ "$3" = "$2" ] || opaque_failed "$1 is $(q "$3"), expected $(q "$2")"
}
# expect_rc0 what: the last run succeeded.
expect_rc0() { [ "$RC" = 0 ] || failed "$1 exited $RC"; }
# expect_out what EXPECTED: the last run succeeded and printed exactly EXPECTED.
expect_out() {
  expect_rc0 "$1"
  if [ "$OUT" != "$2" ]; then
    failed "$1 printed $(q "$OUT"), expected $(q "$2")"
  fi
}

# The mount program's calls (and unmounts) made during the current step, with their stderr.
show_calls() {
  local lines
  lines=$(tail -n +"$((STEP_LOG_LINE + 1))" "$T/mp/calls.log")
  [ -n "$lines" ] || return 0
  echo "--- mount program calls in this step:"
  printf '%s\n' "$lines" | while IFS= read -r line; do
    echo "  $line"
    case $line in
      EXIT*)
        local id=${line#EXIT }
        id=${id%% *}
        [ -s "$T/mp/$id.stderr" ] && sed 's/^/    stderr: /' "$T/mp/$id.stderr"
        ;;
    esac
  done
}

result() {
  local name=$1
  shift
  if (($# == 0)); then
    echo "RESULT $name ok"
  else
    local detail
    detail=$(printf '%s; ' "$@" | tr '\n' ' ')
    echo "RESULT $name fail ${detail%; }"
  fi
}
end() {
  show_calls
  ((OPAQUE_CHECKED)) && result "$CURRENT/opaque-dir" ${OPAQUE_FAILS[@]+"${OPAQUE_FAILS[@]}"}
  result "$CURRENT" ${STEP_FAILS[@]+"${STEP_FAILS[@]}"}
}

# Mounts of the overlay kind in use under the storage (kernel: overlay; else fuse.*).
storage_mounts() {
  awk -v root="$T/graph/" '{
    for (i = 7; i <= NF; i++) if ($i == "-") break;
    if (index($5, root) == 1 && ($(i+1) == "overlay" || $(i+1) ~ /^fuse/)) print $5 " " $(i+1)
  }' /proc/self/mountinfo
}
# Pids of mount program daemons serving this storage.
daemons() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case $cmd in
      *"$T/graph"*) case $cmd in *overlayfs*) echo "${p#/proc/}: $cmd" ;; esac ;;
    esac
  done
}
# no_leftovers: once podman is done, no mount of the storage and no daemon is left.
no_leftovers() {
  local i m d
  for i in $(seq 1 50); do
    m=$(storage_mounts)
    d=$(daemons)
    [ -z "$m" ] && [ -z "$d" ] && return 0
    sleep 0.2
  done
  [ -n "$m" ] && failed "mounts left behind: $(echo $m)"
  [ -n "$d" ] && failed "mount program processes left behind: $(echo "$d" | cut -c1-300)"
  return 0
}

# --------------------------------------------------------------------------------------------
# The image: a busybox root filesystem with a few files and directories to change.
R=$T/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/root" "$R/proc" "$R/sys" "$R/dev" "$R/data/sub/deep" "$R/data/dir2"
cp /bin/busybox "$R/bin/busybox"
# What `busybox --install -s` does, with relative links and without a chroot.
for applet in $(/bin/busybox --list); do
  [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
done
chmod 1777 "$R/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$R/etc/group"
echo hello-lower >"$R/etc/motd"
echo a >"$R/data/a"
echo keep >"$R/data/keep"
echo b >"$R/data/sub/b"
echo d >"$R/data/sub/deep/d"
echo c >"$R/data/dir2/c"
ln -s a "$R/data/link"
tar -C "$R" -cf "$T/busybox.tar" .

echo one-two >"$T/ctx/f1"
echo x >"$T/ctx/d/x"
cat >"$T/ctx/Containerfile" <<EOF
FROM $IMG
RUN mkdir /b && echo one > /b/one && rm /data/a
COPY f1 /b/two
RUN rm -r /data/sub && echo three > /b/three && echo built >> /etc/motd
COPY d /b/d
RUN rm -r /data/dir2 && mkdir /data/dir2 && echo n2 > /data/dir2/n2
RUN cat /b/one /b/two /b/three /b/d/x > /b/all
EOF

# The changes made by the writing containers.
CHANGES='set -e
echo new > /new.txt
echo more >> /etc/motd
rm /data/a
rm -r /data/sub
rm -r /data/dir2 && mkdir /data/dir2 && echo n > /data/dir2/n
mkdir -p /newdir/x && echo y > /newdir/x/y
mv /data/keep /data/kept
chmod 600 /data/kept
ln -s /new.txt /newlink'
# What a container sees after them; the last line is about the directory made again.
SHOW='ls -a /data | tr "\n" " "; echo; cat /etc/motd /new.txt /newdir/x/y /newlink; stat -c %a /data/kept
for f in /data/a /data/sub /data/sub/b; do test -e $f || test -L $f || echo "$f gone"; done
echo "dir2: $(ls -a /data/dir2 | tr "\n" " ")$(test -e /data/dir2/c && echo "but c found by name: $(cat /data/dir2/c)")"'
SHOWN='. .. dir2 kept link 
hello-lower
more
new
y
new
600
/data/a gone
/data/sub gone
/data/sub/b gone'
DIR2_SHOWN='dir2: . .. n '
# check_shown what: the last run printed SHOWN, and DIR2_SHOWN as its last line.
check_shown() {
  expect_rc0 "$1"
  local main dir2
  main=$(grep -v '^dir2: ' <<<"$OUT")
  dir2=$(grep '^dir2: ' <<<"$OUT")
  [ "$main" = "$SHOWN" ] || failed "$1 printed $(q "$main"), expected $(q "$SHOWN")"
  expect_opaque "/data/dir2 (removed, made again) in $1" "$DIR2_SHOWN" "$dir2"
}

RUN=(run pm run --rm --network none)

# --------------------------------------------------------------------------------------------
begin version
if [ "$PROG" != kernel ]; then
  run "$PROG" --version
  expect_rc0 "$PROG --version"
fi
run pm info --format '{{.Store.GraphDriverName}} {{index .Store.GraphOptions "overlay.mount_program"}}'
expect_rc0 "podman info"
[ "${OUT%% *}" = overlay ] || failed "podman info: graph driver $(q "${OUT%% *}"), expected overlay"
if [ "$PROG" != kernel ]; then
  case $OUT in
    *"Executable:$T/bin/mount-program "*"Version:"?*) ;;
    *) failed "podman info does not show the mount program and its version: $(q "$OUT")" ;;
  esac
fi
run pm info
expect_rc0 "podman info"
end

begin import
run pm import "$T/busybox.tar" "$IMG"
expect_rc0 "podman import"
run pm image exists "$IMG"
expect_rc0 "podman image exists"
no_leftovers
end

begin run-read
"${RUN[@]}" "$IMG" sh -c 'cat /etc/motd /data/a /data/sub/b /data/sub/deep/d /data/link; ls -a /data | tr "\n" " "'
expect_out "reading container" "$(printf 'hello-lower\na\nb\nd\na\n. .. a dir2 keep link sub ')"
no_leftovers
end

begin run-write
"${RUN[@]}" "$IMG" sh -c "$CHANGES
$SHOW"
check_shown "writing container"
no_leftovers
end

begin run-image-unchanged
"${RUN[@]}" "$IMG" sh -c 'cat /etc/motd; ls /data | tr "\n" " "; test -e /new.txt || echo no-new'
expect_out "container after the --rm one" "$(printf 'hello-lower\na dir2 keep link sub no-new')"
no_leftovers
end

begin diff
run pm create --name c1 --network none "$IMG" sh -c "$CHANGES"
expect_rc0 "podman create"
run pm start -a c1
expect_rc0 "podman start -a"
run pm diff c1
expect_rc0 "podman diff"
got=$(printf '%s\n' "$OUT" | sort)
# /data/dir2 was removed and made again: opaque in the upper layer. Reading the layer (kernel
# driver: "native" diff) reports "D /data/dir2" and the new content; comparing the mounted
# layer with its parent (with a mount_program: "naive" diff) reports "C /data/dir2" and
# "D /data/dir2/c". Either is right; the rest must be exactly this.
want=$(sort <<'EOF2'
A /new.txt
A /newdir
A /newdir/x
A /newdir/x/y
A /newlink
A /data/kept
C /data
C /etc
C /etc/motd
D /data/a
D /data/keep
D /data/sub
EOF2
)
rest=$(grep -vxE '(C|D) /data/dir2|D /data/dir2/c|A /data/dir2/n' <<<"$got")
missing=$(comm -23 <(echo "$want") <(echo "$rest") | tr '\n' ' ')
extra=$(comm -13 <(echo "$want") <(echo "$rest") | tr '\n' ' ')
[ -z "$missing" ] || failed "podman diff lacks: $missing"
[ -z "$extra" ] || failed "podman diff has unexpected: $extra"
OPAQUE_CHECKED=1
grep -qx 'A /data/dir2/n' <<<"$got" || opaque_failed "podman diff lacks: A /data/dir2/n"
if ! grep -qx 'D /data/dir2' <<<"$got" && ! { grep -qx 'C /data/dir2' <<<"$got" && grep -qx 'D /data/dir2/c' <<<"$got"; }; then
  opaque_failed "podman diff shows neither 'D /data/dir2' nor 'C /data/dir2' with 'D /data/dir2/c': $(grep /data/dir2 <<<"$got" | tr '\n' ' ')"
fi
no_leftovers
end

begin upper-layer
# The container's upper layer, as containers-storage reads it for diff and commit: deletions are
# char 0/0 whiteouts (the layers podman extracted carry AUFS .wh. files), a directory made again
# is opaque (trusted.overlay.opaque=y).
run pm inspect --format '{{.GraphDriver.Data.UpperDir}}' c1
expect_rc0 "podman inspect"
up=$OUT
if [ -d "$up" ]; then
  run sh -c "cd '$up' && find . | sort | while read -r f; do printf '%s %s' \"\$f\" \"\$(stat -c '%F %t:%T' \"\$f\")\"; getfattr -h -d -m - --absolute-names \"\$f\" 2>/dev/null | grep -v '^#' | tr '\n' ' '; echo; done"
  for f in data/a data/keep data/sub; do
    t=$(stat -c '%F %t:%T' "$up/$f" 2>&1)
    [ "$t" = "character special file 0:0" ] || failed "$f in the upper layer is '$t', expected a whiteout (character special file 0:0)"
  done
  [ "$(cat "$up/etc/motd" 2>&1)" = "$(printf 'hello-lower\nmore')" ] || failed "etc/motd in the upper layer is $(q "$(cat "$up/etc/motd" 2>&1)")"
  [ "$(cat "$up/new.txt" 2>&1)" = new ] || failed "new.txt in the upper layer is $(q "$(cat "$up/new.txt" 2>&1)")"
  OPAQUE_CHECKED=1
  o=$(getfattr -h --absolute-names --only-values -n trusted.overlay.opaque "$up/data/dir2" 2>&1)
  [ "$o" = y ] || opaque_failed "data/dir2 in the upper layer has trusted.overlay.opaque $(q "$o"), expected y"
  [ -e "$up/data/dir2/c" ] && opaque_failed "data/dir2/c in the opaque upper directory: $(stat -c '%F %t:%T' "$up/data/dir2/c")"
  [ "$(cat "$up/data/dir2/n" 2>&1)" = n ] || opaque_failed "data/dir2/n in the upper layer is $(q "$(cat "$up/data/dir2/n" 2>&1)")"
else
  failed "podman inspect gave no upper directory: $(q "$up")"
fi
no_leftovers
end

begin commit
run pm commit -q c1 localhost/e2e-c1:latest
expect_rc0 "podman commit"
"${RUN[@]}" localhost/e2e-c1 sh -c "$SHOW"
check_shown "container of the committed image"
# A second layer on top of the committed one: the whiteouts must keep hiding.
"${RUN[@]}" localhost/e2e-c1 sh -c 'echo again > /data/a2; ls /data | tr "\n" " "; cat /data/a 2>/dev/null || echo still-gone'
expect_out "container of the committed image, writing" "$(printf 'a2 dir2 kept link still-gone')"
no_leftovers
end

begin build
run pm build --network none --pull=never -t localhost/e2e-built:latest -f "$T/ctx/Containerfile" "$T/ctx"
expect_rc0 "podman build"
"${RUN[@]}" localhost/e2e-built sh -c 'cat /b/all /etc/motd; ls /data | tr "\n" " "; echo; echo "dir2: $(ls -a /data/dir2 | tr "\n" " ")$(test -e /data/dir2/c && echo "but c found by name")"'
expect_rc0 "container of the built image"
main=$(grep -v '^dir2: ' <<<"$OUT")
want=$(printf 'one\none-two\nthree\nx\nhello-lower\nbuilt\ndir2 keep link ')
[ "$main" = "$want" ] || failed "container of the built image printed $(q "$main"), expected $(q "$want")"
expect_opaque "/data/dir2 (removed, made again in a RUN step)" 'dir2: . .. n2 ' "$(grep '^dir2: ' <<<"$OUT")"
no_leftovers
end

begin build-cached
first=$(pm image inspect --format '{{.Id}}' localhost/e2e-built 2>&1)
run pm build --network none --pull=never -t localhost/e2e-built2:latest -f "$T/ctx/Containerfile" "$T/ctx"
expect_rc0 "second podman build"
cached=$(printf '%s\n' "$OUT" | grep -c 'Using cache')
[ "$cached" = 6 ] || failed "second build: $cached steps 'Using cache', expected 6"
second=$(pm image inspect --format '{{.Id}}' localhost/e2e-built2 2>&1)
[ "$first" = "$second" ] || failed "second build gave image $second, the first $first"
no_leftovers
end

begin image-mount
run pm image mount localhost/e2e-c1
expect_rc0 "podman image mount"
mnt=$OUT
if [ "$RC" = 0 ] && [ -d "$mnt" ]; then
  fstype=$(awk -v m="$mnt" '$5 == m { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i+1); exit } }' /proc/self/mountinfo)
  echo "  mounted on $mnt as ${fstype:-nothing}"
  case $PROG in
    kernel) want_type=overlay ;;
    */ts-overlayfs) want_type=fuse.ts-overlayfs ;;
    *) want_type=fuse.fuse-overlayfs ;;
  esac
  [ "$fstype" = "$want_type" ] || failed "the image mount is '$fstype', expected $want_type"
  run sh -c "cat '$mnt/new.txt' '$mnt/etc/motd'; ls '$mnt/data' | tr '\n' ' '"
  expect_out "reading the image mount from the host" "$(printf 'new\nhello-lower\nmore\ndir2 kept link ')"
  run sh -c "echo x > '$mnt/written-from-host'"
  [ "$RC" != 0 ] || failed "writing to the read-only image mount succeeded"
  run pm image umount localhost/e2e-c1
  expect_rc0 "podman image umount"
  grep -q " $mnt " /proc/self/mountinfo && failed "$mnt still mounted after podman image umount"
else
  failed "podman image mount printed no directory"
fi
no_leftovers
end

begin export
run pm export -o "$T/c1.tar" c1
expect_rc0 "podman export"
run sh -c "tar -tvf '$T/c1.tar' | grep -E ' \\.?/?(new\\.txt|newlink|data/|etc/motd|newdir/x/y)' | awk '{print \$1, \$NF}'"
listing=$(tar -tf "$T/c1.tar" | sed -e 's|^\./||' -e 's|/$||' | sort)
for want in new.txt newlink newdir/x/y data/kept data/dir2/n data/link etc/motd bin/busybox; do
  grep -qx "$want" <<<"$listing" || failed "export lacks $want"
done
for gone in data/a data/keep data/sub data/sub/b; do
  grep -qx "$gone" <<<"$listing" && failed "export has $gone (deleted)"
done
OPAQUE_CHECKED=1
grep -qx data/dir2/c <<<"$listing" && opaque_failed "export has data/dir2/c (deleted)"
grep -q '\.wh\.' <<<"$listing" && failed "export has whiteout files: $(grep '\.wh\.' <<<"$listing" | tr '\n' ' ')"
motd=$(tar -xOf "$T/c1.tar" ./etc/motd 2>/dev/null || tar -xOf "$T/c1.tar" etc/motd 2>/dev/null)
[ "$motd" = "$(printf 'hello-lower\nmore')" ] || failed "etc/motd in the export is $(q "$motd")"
no_leftovers
end

begin parallel
for i in 1 2 3 4; do
  (pm run --rm --network none "$IMG" sh -c "echo p$i > /p; echo more >> /etc/motd; rm /data/a; cat /p /etc/motd; ls /data | tr '\n' ' '" \
    >"$T/logs/par$i.out" 2>"$T/logs/par$i.err"; echo $? >"$T/logs/par$i.rc") &
done
wait
for i in 1 2 3 4; do
  echo "\$ container p$i (exit status $(cat "$T/logs/par$i.rc"))"
  sed 's/^/  | /' "$T/logs/par$i.out"; echo
  sed 's/^/  ! /' "$T/logs/par$i.err"
  [ "$(cat "$T/logs/par$i.rc")" = 0 ] || failed "container p$i exited $(cat "$T/logs/par$i.rc")"
  [ "$(cat "$T/logs/par$i.out")" = "$(printf 'p%s\nhello-lower\nmore\ndir2 keep link sub ' "$i")" ] ||
    failed "container p$i printed $(q "$(cat "$T/logs/par$i.out")")"
done
no_leftovers
end

# --uidmap: rootful podman 4.3 gives the mount program id-mapped mounts of the lower layers
# (LAYER/mapped/N/...), unmounts them (MNT_DETACH) as soon as the mount program has returned,
# and also passes uidmapping=:0:100000:65536,gidmapping=... The mount program must keep using
# the lower directories it was given (fuse-overlayfs holds them open). Seen from the host the
# container's files belong to 100000 (its root).
begin uidmap-mount
OWNER_FAILS=()
run pm create --name cu --network none --uidmap 0:100000:65536 --gidmap 0:100000:65536 "$IMG" sh
expect_rc0 "podman create --uidmap"
run pm mount cu
expect_rc0 "podman mount"
mnt=$OUT
if [ "$RC" = 0 ] && [ -d "$mnt" ]; then
  run sh -c "cat '$mnt/etc/motd'; ls '$mnt/data' | tr '\n' ' '; test -x '$mnt/bin/busybox' && echo busybox"
  expect_out "reading the --uidmap container's mount from the host" "$(printf 'hello-lower\na dir2 keep link sub busybox')"
  o=$(stat -c %u:%g "$mnt/etc/motd" "$mnt/data" 2>&1 | tr '\n' ' ')
  # Reported apart (uidmap-mount/owner): with podman 4.3 the lowers are id-mapped already, and
  # uidmapping must not map their ids once more (fuse-overlayfs 1.10 does, and shows 65534).
  [ "$o" = "100000:100000 100000:100000 " ] || OWNER_FAILS+=("owners seen from the host: $(q "$o"), expected 100000:100000 (the container's root)")
  run pm umount cu
  expect_rc0 "podman umount"
else
  failed "podman mount printed no directory"
fi
run pm rm cu
no_leftovers
end
((${#OWNER_FAILS[@]})) && echo "  CHECK FAILED (owner): ${OWNER_FAILS[*]}"
result uidmap-mount/owner ${OWNER_FAILS[@]+"${OWNER_FAILS[@]}"}

begin uidmap
"${RUN[@]}" --uidmap 0:100000:65536 --gidmap 0:100000:65536 "$IMG" sh -c 'id -u; stat -c %u:%g /etc/motd /data/a; echo w > /w; stat -c %u:%g /w; rm /data/a; echo done'
expect_out "container with --uidmap" "$(printf '0\n0:0\n0:0\n0:0\ndone')"
no_leftovers
end

begin cleanup
run pm rm -af -t 0
expect_rc0 "podman rm -af"
run pm image rm -af
expect_rc0 "podman image rm -af"
no_leftovers
m=$(storage_mounts)
[ -z "$m" ] || failed "mounts left: $m"
grep -q 'fuse\.ts-overlayfs' /proc/self/mountinfo && failed "a fuse.ts-overlayfs mount is left in the namespace: $(grep 'fuse\.ts-overlayfs' /proc/self/mountinfo | head -3)"
end

calls=$(grep -c '^CALL' "$T/mp/calls.log")
unmounts=$(grep -c '^UNMOUNT' "$T/mp/calls.log")
echo "SUMMARY mount program calls: $calls, fusermount3 unmounts: $unmounts"
exit 0
