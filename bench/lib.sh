# Shared by the bench scripts: source it, do not run it.

# Waits up to 10 s for something to listen on HOST:PORT.
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# Installs the Debian package of each missing command: ensure nginx:nginx-light wrk:wrk
ensure() {
    local need=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
    done
    if ((${#need[@]})); then
        apt-get install -y "${need[@]}" >/dev/null 2>&1 \
            || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
    fi
}
