#!/bin/sh
# Both images start here as root, only to make the mounted directories usable, then run the command
# as the unprivileged user gatlab (uid 1000). Docker creates a missing bind-mount source (./data,
# a runs directory) as root with mode 0755, where gatlab could not write a downloaded dataset; such
# a root-owned directory is handed to gatlab (the top directory only, never its contents). A
# directory owned by someone else is left as it is, with a warning if gatlab cannot write it.
set -eu
if [ "$(id -u)" = 0 ]; then
  for dir in /lab/runs /lab/data; do
    [ -d "$dir" ] || continue
    if [ "$(stat -c %u "$dir")" = 0 ]; then
      chown gatlab:gatlab "$dir"
    elif ! setpriv --reuid=gatlab --regid=gatlab --init-groups test -w "$dir"; then
      echo "gatlab: warning: $dir (owner uid $(stat -c %u "$dir")) is not writable by uid 1000" >&2
    fi
  done
  export HOME=/home/gatlab USER=gatlab
  exec setpriv --reuid=gatlab --regid=gatlab --init-groups "$@"
fi
exec "$@"
