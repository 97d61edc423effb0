# Sourced by the scripts that build Go programs: `use_go <script name> <minimum Go version>` sets GO to
# the go command (on PATH, else /usr/local/go/bin/go) and makes sure HOME is set, since the go command
# keeps its module and build caches there, also in a bare environment. Without a toolchain it says what
# is needed and exits 3 (the callers' "no Go" code).
use_go() {
    local script=$1 minimum=$2
    GO="$(command -v go || true)"
    if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
        GO=/usr/local/go/bin/go
    fi
    if [ -z "$GO" ]; then
        echo "$script: no Go toolchain (neither 'go' on PATH nor /usr/local/go/bin/go); Go >= $minimum is needed" >&2
        exit 3
    fi
    if [ -z "${HOME:-}" ]; then
        HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
        export HOME
    fi
}
