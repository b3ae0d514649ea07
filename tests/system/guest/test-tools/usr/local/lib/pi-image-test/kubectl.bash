#!/bin/bash
# `kubectl ...` in the booted guest (system test only; the kubectl stand-in recorded the call). There is no API
# server here: the call goes to the server its kubeconfig names (--kubeconfig FILE, else $KUBECONFIG, else
# ~/.kube/config), the test's fake API server on the host, which runs the join tests' kubectl stand-in against their
# fake cluster and answers with its exit code and output. Sent: the arguments, the content of a file given with
# `-f FILE` and, with `-f -`, standard input.
# Bash builtins and /dev/tcp only, no other process: under emulation each fork+exec costs a tenth of a second or more,
# and the master's agent and token endpoint call kubectl often (the endpoint within a connection's deadline).
#   request   POST /pi-image-test/kubectl  X-Args: N  X-File-Bytes: M   body: N NUL-terminated arguments, the
#             file's M bytes, standard input
#   answer    200  X-Exit-Code: RC  X-Stdout-Bytes: S                   body: stdout's S bytes, then stderr
set -u
export LC_ALL=C  # lengths in bytes
args=("$@")
kubeconfig=${KUBECONFIG:-${HOME:-/root}/.kube/config}
file=""
for ((i = 0; i < $#; i++)); do
  case "${args[i]}" in
    --kubeconfig) kubeconfig=${args[i + 1]:-};;
    --kubeconfig=*) kubeconfig=${args[i]#*=};;
    -f) file=${args[i + 1]:-};;
  esac
done
if [ ! -r "$kubeconfig" ]; then
  echo "error: stat $kubeconfig: no such file or directory" >&2
  exit 1
fi
server=""
while IFS= read -r line; do
  case "$line" in
    *"server: "*) server=${line#*server: }; server=${server#http*://}; server=${server%%/*}; break;;
  esac
done < "$kubeconfig"
content="" input=""
if [ "$file" = - ]; then
  IFS= read -r -d '' input || true
elif [ -n "$file" ]; then
  if [ ! -r "$file" ]; then
    echo "error: the path \"$file\" does not exist" >&2
    exit 1
  fi
  IFS= read -r -d '' content < "$file" || true
fi
length=$((${#content} + ${#input}))
for arg in "$@"; do length=$((length + ${#arg} + 1)); done
if ! { exec 3<>"/dev/tcp/${server%:*}/${server##*:}"; } 2>/dev/null; then
  echo "The connection to the server $server was refused - did you specify the right host or port?" >&2
  exit 1
fi
printf 'POST /pi-image-test/kubectl HTTP/1.0\r\nHost: %s\r\nContent-Length: %s\r\n' "$server" "$length" >&3
printf 'X-Args: %s\r\nX-File-Bytes: %s\r\n\r\n' "$#" "${#content}" >&3
[ $# -eq 0 ] || printf '%s\0' "$@" >&3
printf '%s%s' "$content" "$input" >&3
rc="" stdout_bytes=""
IFS= read -r -t 120 status <&3 || status=""
while IFS= read -r -t 120 line <&3; do  # bash reads a socket byte by byte: the body stays in the socket
  line=${line%$'\r'}
  [ -z "$line" ] && break
  case "$line" in
    X-Exit-Code:*) rc=${line#*: };;
    X-Stdout-Bytes:*) stdout_bytes=${line#*: };;
  esac
done
if [ -z "$rc" ] || [ -z "$stdout_bytes" ]; then
  echo "error: the server $server answered ${status:-nothing}" >&2
  exit 1
fi
out="" err=""
IFS= read -r -t 120 -N "$stdout_bytes" out <&3 || true
IFS= read -r -t 120 -d '' err <&3 || true
printf '%s' "$out"
printf '%s' "$err" >&2
exit "$rc"
