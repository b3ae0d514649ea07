#!/bin/sh
# System test only: the owner's part of `pi-image enroll` on an installed machine (pi-image-test-enroll.service).
#   pitest.enroll=apply   record the tree (tree.py), then `sh /root/enroll-file.sh`, as root
#   pitest.enroll=undo    `sh /root/enroll-file.sh --undo`, then record the tree again
# Output and exit status go to /var/lib/pi-image-test/enroll-<mode>.{log,rc}; the host compares the trees.
set -u
results=/var/lib/pi-image-test
file=/root/enroll-file.sh
mode=""
for word in $(cat /proc/cmdline); do
  case "$word" in pitest.enroll=*) mode=${word#*=};; esac
done
mkdir -p "$results"
case "$mode" in
  apply) python3 /usr/local/lib/pi-image-test/tree.py > "$results/tree-before.json"
         sh "$file" > "$results/enroll-apply.log" 2>&1
         echo $? > "$results/enroll-apply.rc";;
  undo)  sh "$file" --undo > "$results/enroll-undo.log" 2>&1
         echo $? > "$results/enroll-undo.rc"
         python3 /usr/local/lib/pi-image-test/tree.py > "$results/tree-after-undo.json";;
esac
sync
echo "PITEST enroll $mode exit $(cat "$results/enroll-$mode.rc" 2>/dev/null)" > /dev/console
