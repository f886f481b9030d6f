#!/bin/sh
# The official redis image's entrypoint contract: started as root, it gives /data to the redis
# user and runs the server as that user.
set -e
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find /data \! -user redis -exec chown redis {} +
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
