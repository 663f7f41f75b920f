#!/usr/bin/env bash
# Build stock etcd and etcdctl binaries of one version from etcd's published Go modules, with the
# machine's Go toolchain and module proxy, into a cache outside the work tree:
#   $DISCOVERD_ETCD_CACHE/<version>/{etcd,etcdctl}   (default ~/.cache/discoverd-etcd)
# `go install go.etcd.io/etcd/server/v3@vX` refuses (replace directives), so a throwaway wrapper module
# in a temp dir requires the server and etcdctl modules and has one main for each. Nothing of it, and
# no etcd source or binary, ever enters the repository. Idempotent: an existing build is kept.
set -euo pipefail
version=${1:?usage: build_etcd.sh VERSION (e.g. 3.7.1)}
# A bare environment (CI, cron) may lack HOME, or Go's usual place on PATH.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME
[ -x /usr/local/go/bin/go ] && case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH="$PATH:/usr/local/go/bin" ;; esac
cache=${DISCOVERD_ETCD_CACHE:-$HOME/.cache/discoverd-etcd}
out="$cache/$version"
if [ -x "$out/etcd" ] && [ -x "$out/etcdctl" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "build_etcd: no Go toolchain on PATH; cannot build etcd $version" >&2; exit 3; }
mkdir -p "$cache"
exec 9>"$cache/.lock-$version"
flock 9
if [ -x "$out/etcd" ] && [ -x "$out/etcdctl" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init discoverd.test/etcdbuild >/dev/null 2>&1
mkdir -p cmd/etcd cmd/etcdctl
cat > cmd/etcd/main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > cmd/etcdctl/main.go <<'GO'
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
GO
echo "build_etcd: fetching etcd v$version modules (once per machine)" >&2
go get "go.etcd.io/etcd/server/v3@v$version" "go.etcd.io/etcd/etcdctl/v3@v$version" >&2
go mod tidy >&2
mkdir -p "$out.tmp"
CGO_ENABLED=0 go build -trimpath -o "$out.tmp/etcd" ./cmd/etcd
CGO_ENABLED=0 go build -trimpath -o "$out.tmp/etcdctl" ./cmd/etcdctl
rm -rf "$out"
mv "$out.tmp" "$out"
"$out/etcd" --version >&2
