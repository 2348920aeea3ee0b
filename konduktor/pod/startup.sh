#!/bin/sh
# konduktor pod startup script: fetch, verify and place the launch's files, then run `run:`.
# Rendered from a launch plan by konduktor.pod.render; the functions below are fixed, the
# calls at the end come from the plan. POSIX sh (dash, busybox ash); needs coreutils (or
# busybox), awk and tar (GNU or busybox), plus a way to fetch (cp for file://, curl, wget,
# python3, aws or gcloud) and to decompress zstd (zstd, or python3 with zstandard or
# compression.zstd); as root it installs curl, CA certificates and zstd when they lack.
set -u

K_EXIT=97  # sync failed: nothing of run: has started
K_CRED=${KONDUKTOR_CREDENTIALS_DIR:-/run/konduktor/credentials}
K_STATE="$HOME/.konduktor/pod"
K_PY=${KONDUKTOR_PYTHON:-python3}  # the local target names its own Python
K_TERMLOG=${KONDUKTOR_TERMINATION_LOG:-/dev/termination-log}  # Kubernetes shows it in the pod
K_IMAGE_LINE="RUN apt-get update && apt-get install -y curl ca-certificates zstd (or: apk add curl ca-certificates zstd)"
K_TMP=""
K_STAGE=""
K_UNZ=""
K_BIG=4000000  # bytes: smaller objects are fetched and extracted without progress lines
K_TICK=${KONDUKTOR_PROGRESS_SECONDS:-2}  # seconds between two progress lines
K_WATCH=""  # the progress watcher (k_watch) running, if any

k_log() { [ -n "${KONDUKTOR_QUIET:-}" ] || printf 'konduktor: %s\n' "$*" >&2; }
k_fail() {
  printf 'konduktor: sync failed: %s\n' "$*" >&2
  { printf 'konduktor: sync failed: %s\n' "$*" >"$K_TERMLOG"; } 2>/dev/null
  exit "$K_EXIT"
}
k_have() { command -v "$1" >/dev/null 2>&1; }
k_cleanup() {
  k_unwatch
  if [ -n "$K_STAGE" ]; then rm -rf "$K_STAGE"; fi
  if [ -n "$K_TMP" ]; then rm -rf "$K_TMP"; fi
}
trap k_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Progress, for objects of K_BIG bytes or more: k_watching starts k_watch in the background
# (unless KONDUKTOR_QUIET), k_unwatch stops it (k_cleanup too: on failure, INT and TERM).
k_watching() {
  [ -z "${KONDUKTOR_QUIET:-}" ] || return 0
  k_watch "$1" "$2" "${3:-}" &
  K_WATCH=$!
}

k_unwatch() {
  [ -n "$K_WATCH" ] || return 0
  kill "$K_WATCH" 2>/dev/null
  wait "$K_WATCH" 2>/dev/null
  K_WATCH=""
}

# k_watch WHAT TOTAL [FILE]: every K_TICK seconds, "WHAT 12.0 MB of 40.0 MB (30%)": the
# bytes of FILE fetched so far (with the temporary FILE.* or FILE_* the aws CLI, boto3 and
# gcloud write first), else those of fd 7 its reader consumed (Linux's /proc; elsewhere,
# the seconds so far). It reads no byte of either file, and ends with the script.
k_watch() {
  trap - EXIT
  K_NAP=""
  trap 'kill "$K_NAP" 2>/dev/null; wait "$K_NAP" 2>/dev/null; exit 0' TERM  # its sleep too
  k_size "$2"
  K_OF=$K_SIZE
  K_BEGAN=$(date +%s)
  while kill -0 "$$" 2>/dev/null; do
    sleep "$K_TICK" >/dev/null 2>&1 &  # not holding the script's stderr open
    K_NAP=$!
    wait "$K_NAP" || exit 0  # a KONDUKTOR_PROGRESS_SECONDS sleep refuses: no lines at all
    if [ -n "$3" ]; then
      # shellcheck disable=SC2012  # sizes only: ls reads no byte (find -printf is GNU's)
      K_DONE=$(ls -ln "$3" "$3".* "$3"_* 2>/dev/null | awk '{ n += $5 } END { print n + 0 }')
    else
      K_DONE=""
      if [ -r /proc/self/fdinfo/7 ]; then
        while read -r K_FIELD K_VALUE; do
          if [ "$K_FIELD" = pos: ]; then K_DONE=$K_VALUE; fi
        done </proc/self/fdinfo/7
      fi
    fi
    if [ -n "$K_DONE" ]; then
      k_size "$K_DONE"
      k_log "$1 $K_SIZE of $K_OF ($((K_DONE * 100 / $2))%)"
    else
      k_log "$1 ($K_OF): $(($(date +%s) - K_BEGAN)) s"
    fi
  done
}

# k_size BYTES: K_SIZE is BYTES as konduktor writes sizes (powers of 1000: 512 B, 23.4 MB).
k_size() {
  if [ "$1" -lt 1000 ]; then K_SIZE="$1 B"; return 0; fi
  K_DIV=1000 K_UNIT=kB
  if [ "$1" -ge 1000000000 ]; then K_DIV=1000000000 K_UNIT=GB
  elif [ "$1" -ge 1000000 ]; then K_DIV=1000000 K_UNIT=MB
  fi
  K_TENTHS=$((($1 * 10 + K_DIV / 2) / K_DIV))
  K_SIZE="$((K_TENTHS / 10)).$((K_TENTHS % 10)) $K_UNIT"
}

# k_shown PATH: K_SHOWN is PATH with $HOME written as ~, as the task file writes it.
k_shown() {
  case $1 in
    "$HOME"/*) K_SHOWN='~'/${1#"$HOME"/} ;;
    *) K_SHOWN=$1 ;;
  esac
}

k_start() {
  mkdir -p "$K_STATE/done" || k_fail "cannot create $K_STATE; is \$HOME ($HOME) writable?"
  K_TMP=$(mktemp -d "$K_STATE/tmp.XXXXXX") || k_fail "cannot create a temporary directory in $K_STATE"
  k_have awk || k_fail "the image has no awk, which konduktor needs to check layers; add one (apt-get install mawk, or busybox)"
  k_checker >"$K_TMP/check.awk" || k_fail "cannot write $K_TMP/check.awk"
  K_TAR_STYLE=busybox  # names listed as they are; GNU tar escapes them (\n, \\, \ooo)
  if tar --version 2>/dev/null | grep -q 'GNU tar'; then K_TAR_STYLE=gnu; fi
  k_credentials
}

# Cloud credentials mounted from the Secret, copied where the CLIs and SDKs look (0600).
k_credentials() {
  k_copy_secret aws-credentials "$HOME/.aws/credentials"
  k_copy_secret aws-config "$HOME/.aws/config"
  if k_copy_secret gcs-credentials.json "$HOME/.config/gcloud/application_default_credentials.json"; then
    export GOOGLE_APPLICATION_CREDENTIALS="$HOME/.config/gcloud/application_default_credentials.json"
  fi
}

k_copy_secret() {
  [ -f "$K_CRED/$1" ] || return 1
  [ -e "$2" ] && return 0
  if ! { mkdir -p "$(dirname "$2")" && chmod 700 "$(dirname "$2")" \
    && (umask 077 && cp "$K_CRED/$1" "$2") && chmod 600 "$2"; }; then
    k_fail "cannot copy credentials $K_CRED/$1 to $2"
  fi
}

k_sha256() {
  if k_have sha256sum; then K_SUM=$(sha256sum <"$1") || return 1
  elif k_have shasum; then K_SUM=$(shasum -a 256 <"$1") || return 1
  elif k_have openssl; then K_SUM=$(openssl dgst -sha256 -r <"$1") || return 1
  elif k_have "$K_PY"; then
    K_SUM=$("$K_PY" -c 'import hashlib,sys
h = hashlib.sha256()
for chunk in iter(lambda: sys.stdin.buffer.read(1 << 20), b""): h.update(chunk)
print(h.hexdigest())' <"$1") || return 1
  else
    k_fail "cannot verify downloads: no sha256sum, shasum, openssl or python3 in the image; add coreutils"
  fi
  K_SUM=${K_SUM%% *}
}

# k_fetch URL HTTPS DEST: try every way the image has; K_TRIED says what was tried.
k_fetch() {
  K_TRIED=""
  case $1 in
    file://*) cp "${1#file://}" "$3" && return 0; K_TRIED="cp"; return 1 ;;
  esac
  if [ -n "$2" ]; then
    if k_have curl; then
      curl -fsSL --retry 3 --retry-delay 1 -o "$3" "$2" && return 0; K_TRIED="$K_TRIED curl"
    fi
    if k_have wget; then
      wget -q -t 3 -O "$3" "$2" && return 0; K_TRIED="$K_TRIED wget"
    fi
    if k_have "$K_PY"; then
      "$K_PY" -c 'import shutil,sys,urllib.request as u; shutil.copyfileobj(u.urlopen(sys.argv[1], timeout=60), open(sys.argv[2], "wb"), 1 << 20)' "$2" "$3" \
        && return 0; K_TRIED="$K_TRIED python3-urllib"
    fi
  fi
  case $1 in
    s3://*) k_fetch_s3 "$1" "$3" ;;
    gs://*) k_fetch_gs "$1" "$3" ;;
    *) return 1 ;;
  esac
}

k_fetch_s3() {
  if k_have aws; then
    aws ${K_ENDPOINT:+--endpoint-url "$K_ENDPOINT"} ${K_REGION:+--region "$K_REGION"} \
      s3 cp --only-show-errors "$1" "$2" && return 0; K_TRIED="$K_TRIED aws"
  fi
  if k_have "$K_PY" && "$K_PY" -c 'import boto3' 2>/dev/null; then
    "$K_PY" - "$1" "$2" <<'KONDUKTOR_PY' && return 0
import os, sys, boto3
bucket, _, key = sys.argv[1][len("s3://"):].partition("/")
s3 = boto3.client("s3", endpoint_url=os.environ.get("K_ENDPOINT") or None,
                  region_name=os.environ.get("K_REGION") or None)
s3.download_file(bucket, key, sys.argv[2])
KONDUKTOR_PY
    K_TRIED="$K_TRIED python3-boto3"
  fi
  return 1
}

k_fetch_gs() {
  if k_have gcloud; then
    gcloud storage cp --quiet "$1" "$2" && return 0; K_TRIED="$K_TRIED gcloud"
  fi
  if k_have "$K_PY" && "$K_PY" -c 'import google.cloud.storage' 2>/dev/null; then
    "$K_PY" - "$1" "$2" <<'KONDUKTOR_PY' && return 0
import os, sys
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
bucket, _, key = sys.argv[1][len("gs://"):].partition("/")
endpoint = os.environ.get("K_ENDPOINT")
if endpoint:  # an emulator
    client = storage.Client(project="konduktor", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": endpoint})
else:
    client = storage.Client()
client.bucket(bucket).blob(key).download_to_filename(sys.argv[2])
KONDUKTOR_PY
    K_TRIED="$K_TRIED python3-google-cloud-storage"
  fi
  return 1
}

# k_get URL HTTPS SHA256 DEST [SIZE WHAT]: fetch and verify, or fail naming the object; an
# object of K_BIG bytes or more shows its progress as "fetch WHAT".
k_get() {
  if [ "${5:-0}" -ge "$K_BIG" ]; then k_watching "fetch $6" "$5" "$4"; fi
  k_fetch "$1" "$2" "$4" || k_fetch_installed "$1" "$2" "$4" || {
    if [ -z "$K_TRIED" ]; then
      k_fail "cannot fetch $1: the image has none of curl, wget, python3 (with boto3 or google-cloud-storage), aws or gcloud, and konduktor runs as $(id -u), not root, so it cannot install them; add to the image: $K_IMAGE_LINE"
    fi
    k_fail "cannot fetch $1 (tried:$K_TRIED); see the messages above"
  }
  k_unwatch
  k_sha256 "$4" || k_fail "cannot compute the sha256 of $1"
  [ "$K_SUM" = "$3" ] || k_fail "$1 is corrupt: sha256 $K_SUM, expected $3; delete it from the store and launch again"
}

# As root, an image that cannot fetch over HTTPS at all gets curl and CA certificates.
k_fetch_installed() {
  [ -z "$K_TRIED" ] && [ -n "$2" ] && k_install curl ca-certificates && k_fetch "$1" "$2" "$3"
}

# k_choose_unz WHAT: pick the decompressor once: zstd; python3 with zstandard or
# compression.zstd; as root, zstd from the image's package manager.
k_choose_unz() {
  [ -n "$K_UNZ" ] && return 0
  if k_have zstd; then K_UNZ=zstd
  elif k_have "$K_PY" && "$K_PY" -c 'import zstandard' 2>/dev/null; then K_UNZ=zstandard
  elif k_have "$K_PY" && "$K_PY" -c 'from compression import zstd' 2>/dev/null; then K_UNZ=compression.zstd
  elif k_install zstd && k_have zstd; then K_UNZ=zstd
  else
    k_fail "cannot decompress $1: the image has no zstd and no python3 with zstandard; add zstd to the image (apt-get install zstd, apk add zstd) or pip install zstandard"
  fi
}

# k_unpack TAR_BYTES: the tar of the layer open as fd 7 (k_reading) on stdout, never more
# than its manifest's size (a decompression bomb stops there; nothing uncompressed is
# written to disk).
k_unpack() {
  case $K_UNZ in
    zstd) zstd -q -d -c ;;
    *) "$K_PY" -c 'import shutil, sys
if sys.argv[1] == "zstandard":
    import zstandard
    zstandard.ZstdDecompressor().copy_stream(sys.stdin.buffer, sys.stdout.buffer)
else:
    from compression import zstd  # Python 3.14+
    with zstd.open(sys.stdin.buffer) as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)' "$K_UNZ" ;;
  esac <&7 2>"$K_TMP/unpack.err" | head -c "$1"
}

# k_reading FILE [WHAT TOTAL]: open FILE, from its start, as fd 7 of this shell, which
# k_unpack's decompressor reads as its stdin; with WHAT, watch how far it has read (the
# file offset they share) while a layer of K_BIG bytes or more is checked or extracted.
k_reading() {
  k_unwatch
  command exec 7<"$1" || k_fail "cannot read $1"
  if [ -n "${2:-}" ]; then k_watching "$2" "$3"; fi
}

# k_install PACKAGE...: as root, with the image's package manager.
k_install() {
  [ "$(id -u)" = 0 ] || return 1
  k_log "installing $* with the image's package manager"
  if k_have apt-get; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >/dev/null 2>&1
  elif k_have apk; then apk add --no-cache -q "$@" >/dev/null 2>&1
  elif k_have dnf; then dnf install -y -q "$@" >/dev/null 2>&1
  elif k_have yum; then yum install -y -q "$@" >/dev/null 2>&1
  else return 1
  fi
}

# k_tree TARGET MARK: start building the directory TARGET from layers (k_layer), or skip it
# when a previous run of this container already placed this exact content there.
k_tree() {
  K_TARGET=$1
  K_MARK="$K_STATE/done/$2"
  K_SKIP=""
  if [ -d "$K_TARGET" ] && [ -f "$K_MARK" ]; then
    k_log "$1 is already in place (container restart): not applied again"
    K_SKIP=1
    return 0
  fi
  K_PARENT=$(dirname "$K_TARGET")
  mkdir -p "$K_PARENT" || k_fail "cannot create $K_PARENT"
  K_STAGE=$(mktemp -d "$K_PARENT/.konduktor-stage.XXXXXX") || k_fail "cannot create a staging directory in $K_PARENT"
  : >"$K_TMP/links"  # the symlinks placed in this tree so far, as tar lists their names
  K_DISK=""  # set when the stage holds files no layer listed (git mode's checkout)
  K_LATER=""  # set once a layer is applied: later layers may replace what it placed
}

# Git mode: the host keys pinned at launch (stdin), then k_git clones into the staging dir.
k_known_hosts() {
  if ! { mkdir -p "$K_STATE/ssh" && chmod 700 "$K_STATE/ssh" && cat >"$K_STATE/ssh/known_hosts"; }; then
    k_fail "cannot write $K_STATE/ssh/known_hosts"
  fi
}

# k_git URL BRANCH SHA KEY SUBMODULES: fetch exactly SHA (shallow where the server allows).
k_git() {
  [ -n "$K_SKIP" ] && return 0
  k_have git || k_install git || k_fail "git mode needs git in the image; add it (apt-get install git) or use --mode tarball"
  k_have ssh || k_install openssh-client || k_fail "git mode needs ssh in the image; add it (apt-get install openssh-client) or use --mode tarball"
  [ -f "$4" ] || k_fail "the SSH key $4 is missing in the pod: mount it (file_mounts, git.ssh_key or --ssh-secret)"
  chmod 600 "$4" 2>/dev/null  # a file mount keeps the local mode; ssh wants 0600 (a Secret is read-only)
  if ! (umask 077 && cp "$4" "$K_STATE/ssh/key") || ! chmod 600 "$K_STATE/ssh/key"; then
    k_fail "cannot copy the SSH key $4 to $K_STATE/ssh/key"
  fi
  # git runs GIT_SSH_COMMAND through a shell: the inner quotes are meant for it.
  # shellcheck disable=SC2089,SC2090
  export GIT_SSH_COMMAND="ssh -i '$K_STATE/ssh/key' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile='$K_STATE/ssh/known_hosts'"
  if ! { git init -q "$K_STAGE" && git -C "$K_STAGE" remote add origin "$1"; }; then
    k_fail "cannot create a repository in $K_STAGE"
  fi
  if ! git -C "$K_STAGE" fetch -q --depth 1 origin "$3" 2>"$K_TMP/git.err"; then
    k_git_refused "$1"
    k_log "the server does not serve single commits; fetching branch $2"
    git -C "$K_STAGE" fetch -q origin "+refs/heads/$2:refs/remotes/origin/$2" 2>"$K_TMP/git.err" || {
      k_git_refused "$1"
      k_fail "cannot fetch $2 from $1: $(tail -n 1 "$K_TMP/git.err")"
    }
  fi
  git -C "$K_STAGE" cat-file -e "$3^{commit}" 2>/dev/null \
    || k_fail "commit $3 is not reachable from $2 on $1: was it force-pushed away? launch again"
  git -C "$K_STAGE" checkout -q -B "$2" "$3" || k_fail "cannot check out $3"
  K_DISK=1 K_LATER=1
  if [ "$5" = 1 ]; then
    git -C "$K_STAGE" submodule update -q --init --recursive 2>"$K_TMP/git.err" \
      || k_fail "cannot fetch the submodules of $1: $(tail -n 1 "$K_TMP/git.err")"
  fi
  k_log "checked out $3 ($2) from $1"
}

k_git_refused() {
  K_ERR=$(cat "$K_TMP/git.err" 2>/dev/null)
  case $K_ERR in
    *"REMOTE HOST IDENTIFICATION HAS CHANGED"* | *"Host key verification failed"*)
      k_fail "the host key of $1 does not match the one pinned at launch (from your known_hosts): the server's key changed or someone is in between; check it, update ~/.ssh/known_hosts, then launch again" ;;
    *"Permission denied"*)
      k_fail "$1 refused the SSH key: add its public key to the git server (a deploy key or your account)" ;;
  esac
}

# k_layer URL HTTPS SHA256 MEMBERS TAR_BYTES SIZE KIND: fetch, verify, check and apply one
# layer (SIZE bytes compressed; base, overlay or full) onto the staging directory. Every shell and tar alike: the layer's listing is checked before
# anything is written (only regular files, directories and symlinks; no setuid, setgid or
# sticky bit; no absolute or '..' name, none that tar rewrites; nothing under a symlink of
# this tree; at most MEMBERS members and TAR_BYTES bytes); then whiteouts are applied and
# tar extracts with the container user as owner and its umask on modes. A layer of K_BIG
# bytes or more (compressed or not) shows its progress, and a closing line.
k_layer() {
  [ -n "$K_SKIP" ] && return 0
  K_WHAT="" K_SINCE=""
  if [ "$6" -ge "$K_BIG" ] || [ "$5" -ge "$K_BIG" ]; then
    k_shown "$K_TARGET"
    K_WHAT="$7 layer of $K_SHOWN" K_SINCE=$(date +%s)
  fi
  k_get "$1" "$2" "$3" "$K_TMP/layer.zst" "$6" "$K_WHAT"
  k_is_zstd "$K_TMP/layer.zst" "$1"
  k_choose_unz "$1"
  [ -z "$K_WHAT" ] || K_FETCHED=$(date +%s)
  k_reading "$K_TMP/layer.zst" "${K_WHAT:+check $K_WHAT}" "$6"
  k_unpack "$5" | LC_ALL=C tar -tvf - >"$K_TMP/list" 2>"$K_TMP/list.err" \
    || k_fail "$1 is not a readable tar archive: $(k_first_error)"
  k_unwatch
  awk -v members="$4" -v style="$K_TAR_STYLE" -v disk="$K_DISK" -v later="$K_LATER" \
    -v links="$K_TMP/links" -v after="$K_TMP/after.sh" -f "$K_TMP/check.awk" \
    "$K_TMP/links" "$K_TMP/list" >"$K_TMP/apply.sh" 2>"$K_TMP/why" \
    || k_fail "$1: $(head -n 1 "$K_TMP/why"); the layer is corrupt or hostile, refusing it"
  mv "$K_TMP/links.new" "$K_TMP/links" || k_fail "cannot write $K_TMP/links"
  if grep -q 'emoving leading' "$K_TMP/list.err"; then
    k_fail "$1 holds an absolute or '..' member name (tar rewrote it), which would leave the destination; refusing it"
  fi
  # shellcheck disable=SC1091  # written just above: whiteouts, replaced links, checks
  . "$K_TMP/apply.sh"
  k_reading "$K_TMP/layer.zst" "${K_WHAT:+extract $K_WHAT}" "$6"
  k_unpack "$5" | (umask 022 && tar -xmo --no-same-permissions -f - -C "$K_STAGE") 2>"$K_TMP/list.err" \
    || k_fail "cannot extract $1: $(k_first_error)"
  k_unwatch
  exec 7<&-
  # shellcheck disable=SC1091  # the whiteout markers themselves go
  . "$K_TMP/after.sh"
  rm -f "$K_TMP/layer.zst" "$K_TMP/list"
  K_LATER=1
  [ -z "$K_WHAT" ] || k_took "$K_WHAT" "$6" "$5"
}

# k_took WHAT SIZE TAR_BYTES: a big layer's closing line, with its sizes and times.
k_took() {
  K_NOW=$(date +%s)
  k_size "$2"
  K_LINE="$1: $K_SIZE fetched in $((K_FETCHED - K_SINCE)) s"
  k_size "$3"
  k_log "$K_LINE, $K_SIZE checked and extracted in $((K_NOW - K_FETCHED)) s"
}

k_first_error() {
  head -n 1 "$K_TMP/unpack.err" "$K_TMP/list.err" 2>/dev/null | grep -v '^==>' | grep . | head -n 1
}

# k_is_zstd FILE WHAT: a layer that is not zstd is not one of ours.
k_is_zstd() {
  K_MAGIC=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
  [ "$K_MAGIC" = 28b52ffd ] || k_fail "$2 is not a zstd file (it starts with ${K_MAGIC:-nothing}), so not a konduktor layer; delete it from the store and launch again"
}

# The layer checker (awk: every image has one). It reads the tree's symlinks so far (the
# file links), then a layer's `tar -tv` listing; prints the shell lines to run before
# extracting (whiteouts, symlinks the layer replaces) and, into `after`, those to run
# after it (the whiteout markers go); keeps links.new; refuses with one line on stderr.
k_checker() {
  cat <<'KONDUKTOR_AWK'
function refuse(why) { print why > "/dev/stderr"; failed = 1; exit 1 }
function q(s) { gsub(/'/, "'\\''", s); return "'" s "'" }
function octal(s,   n, i) { for (i = 1; i <= 3; i++) n = n * 8 + substr(s, i, 1); return n }
function raw(s,   out, c, i) {  # a name as GNU tar escaped it, as it is
  if (style != "gnu" || index(s, "\\") == 0) return s
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "\\") {
      c = substr(s, ++i, 1)
      if (c ~ /[0-7]/) { c = sprintf("%c", octal(substr(s, i, 3))); i += 2 }
      else if (c == "n") c = "\n"
      else if (c == "t") c = "\t"
      else if (c == "r") c = "\r"
      else if (c == "f") c = "\f"
      else if (c == "v") c = "\v"
      else if (c == "a") c = "\007"
      else if (c == "b") c = "\b"
    }
    out = out c
  }
  return out
}
function under_link(path,   p) {  # the nearest parent of path that is a symlink, if any
  for (p = path; match(p, /\/[^\/]*$/); ) {
    p = substr(p, 1, RSTART - 1)
    if (p in link) return p
  }
  return ""
}
BEGIN {
  kinds["h"] = "hard links"; kinds["c"] = "character devices"; kinds["b"] = "block devices"
  kinds["p"] = "FIFOs"; kinds["s"] = "sockets"
  printf "" > after
  printf "" > (links ".new")
}
FILENAME == links { link[$0] = 1; next }
{
  if (++n > members + 0) refuse("its listing has more members than its manifest says (" members "): a corrupt or hostile layer, or, under busybox tar, a name with a newline (use an image with GNU tar)")
  type = substr($0, 1, 1); perm = substr($0, 2, 9); name = $0
  if (!sub(/^[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ /, "", name)) refuse("an unreadable listing line: " $0)
  if (type == "l") {
    k = index(name, " -> ")
    if (!k || index(substr(name, k + 4), " -> ")) refuse("symlink " name " cannot be listed unambiguously (' -> ' in its name or target)")
    name = substr(name, 1, k - 1)
  } else if (type == "-" || type == "d") {
    # busybox tar lists a hard link as a file NAME -> TARGET (GNU tar: type h)
    if (style != "gnu" && index(name, " -> ")) refuse(name " is a hard link (or its name holds ' -> ', which busybox tar cannot list unambiguously)")
  } else refuse(name ": " (type in kinds ? kinds[type] : "members of type '" type "'") " are not allowed")
  if (perm ~ /[sStT]/) refuse(name ": setuid, setgid and sticky bits are not allowed")
  if (name ~ /^\// || ("/" name "/") ~ /\/\.\.\//) refuse("it holds " name ", which would leave the destination (an absolute or '..' name)")
  name = "/" name "/"  # as konduktor extract: '.' and empty components name the same path
  while (gsub(/\/\.\//, "/", name)) {}
  gsub(/\/+/, "/", name); name = substr(name, 2, length(name) - 2)
  if (name == "") refuse("a member names the destination itself")
  if ((p = under_link(name)) != "") refuse(p " is a symlink in this tree; refusing to write through it")
  base = name; sub(/^.*\//, "", base); dir = substr(name, 1, length(name) - length(base))
  if (substr(base, 1, 4) == ".wh.") {
    target = dir substr(base, 5)
    if (seen) refuse(name ": whiteouts must come before every other member")
    if (type != "-" || substr(base, 5) ~ /^(\.\.?)?$/) refuse(name ": not a whiteout konduktor writes")
    print "rm -rf -- \"$K_STAGE\"/" q(raw(target))
    for (l in link) if (l == target || index(l, target "/") == 1) delete link[l]
    print "rm -f -- \"$K_STAGE\"/" q(raw(name)) > after
    next
  }
  seen = 1
  if (type == "d" && perm != "rwxr-xr-x" || type == "-" && perm !~ /^(rw-r--r--|rwxr-xr-x)$/) {
    mode = type == "d" || perm ~ /x/ ? "755" : "644"  # as konduktor extract: 0644 or 0755
    print "chmod " mode " -- \"$K_STAGE\"/" q(raw(name)) > after
  }
  if (disk) print "k_unlinked " q(raw(name))
  if (name in link) { print "rm -f -- \"$K_STAGE\"/" q(raw(name)); delete link[name] }
  else if (later && type != "d") print "k_replace " q(raw(name))
  if (type == "l") link[name] = 1
}
END {
  if (failed) exit 1
  for (l in link) print l > (links ".new")
}
KONDUKTOR_AWK
}

# A file or symlink of a later layer takes the place of an (emptied) directory.
k_replace() {
  if [ -d "$K_STAGE/$1" ] && [ ! -L "$K_STAGE/$1" ]; then rmdir "$K_STAGE/$1" 2>/dev/null; fi
  return 0
}

# Run inside apply.sh for each member when the stage holds a checkout: no parent may be a
# symlink there either.
# Nothing is written or deleted through a symlink: no parent of NAME may be one.
k_unlinked() {
  K_REST=${1%/}
  K_AT=$K_STAGE
  while :; do
    case $K_REST in */*) ;; *) return 0 ;; esac
    K_AT="$K_AT/${K_REST%%/*}"
    K_REST=${K_REST#*/}
    [ -L "$K_AT" ] && k_fail "${K_AT#"$K_STAGE"/} is a symlink in this tree; refusing to write through it (a corrupt or hostile layer)"
  done
}

# Move the staged tree into place (the old one, from an earlier launch, goes away).
k_place() {
  [ -n "$K_SKIP" ] && return 0
  chmod 755 "$K_STAGE"
  if [ -e "$K_TARGET" ] || [ -L "$K_TARGET" ]; then
    K_OLD="$K_STAGE.old"
    if ! { mv "$K_TARGET" "$K_OLD" && mv "$K_STAGE" "$K_TARGET" && rm -rf "$K_OLD"; }; then
      k_fail "cannot move the new tree into $K_TARGET"
    fi
  else
    mv "$K_STAGE" "$K_TARGET" || k_fail "cannot move the new tree into $K_TARGET"
  fi
  K_STAGE=""
  : >"$K_MARK"
  k_log "placed $K_TARGET"
}

# k_file TARGET URL HTTPS SHA256 MODE SIZE: one mounted file (of SIZE bytes).
k_file() {
  K_TARGET=$1
  if [ -f "$K_TARGET" ] && k_sha256 "$K_TARGET" && [ "$K_SUM" = "$4" ]; then
    chmod "$5" "$K_TARGET"
    return 0
  fi
  K_TOOK=""
  if [ "$6" -ge "$K_BIG" ]; then K_SINCE=$(date +%s); fi
  k_shown "$K_TARGET"
  k_get "$2" "$3" "$4" "$K_TMP/file" "$6" "$K_SHOWN"
  if [ "$6" -ge "$K_BIG" ]; then k_size "$6" && K_TOOK=" ($K_SIZE in $(($(date +%s) - K_SINCE)) s)"; fi
  if ! { mkdir -p "$(dirname "$K_TARGET")" && chmod "$5" "$K_TMP/file" \
    && mv -f "$K_TMP/file" "$K_TARGET"; }; then
    k_fail "cannot place $K_TARGET"
  fi
  k_log "placed $K_TARGET$K_TOOK"
}

# k_bucket TARGET URL MARK: a bucket URL copied as is to TARGET: the object it names as a
# file (as Konduktor and SkyPilot do when the object exists), else every object under it
# as a directory; with the aws CLI or gcloud, else python3 with boto3 or
# google-cloud-storage.
k_bucket() {
  K_TARGET=$1
  K_MARK="$K_STATE/done/bucket-$3"
  if [ -f "$K_MARK" ] && [ -e "$K_TARGET" ]; then return 0; fi
  K_PARENT=$(dirname "$K_TARGET")
  mkdir -p "$K_PARENT" || k_fail "cannot create $K_PARENT"
  case $2 in
    s3://*) k_bucket_aws "$2" "$K_TARGET" || k_bucket_py "$2" "$K_TARGET" boto3 ;;
    gs://*) k_bucket_gcloud "$2" "$K_TARGET" || k_bucket_py "$2" "$K_TARGET" google.cloud.storage ;;
  esac || k_fail "cannot copy $2 to $1: it needs the aws CLI (s3://) or gcloud (gs://), or python3 with boto3 or google-cloud-storage, in the image, and credentials (konduktor check s3|gs)"
  : >"$K_MARK"
  k_log "placed $K_TARGET from $2"
}

# k_key URL: K_BUCKET and K_KEY, the object URL would name (K_KEY empty: none, as for
# s3://bucket or s3://bucket/prefix/).
k_key() {
  K_BUCKET=${1#*://}
  K_KEY=""
  case $K_BUCKET in */?*) K_KEY=${K_BUCKET#*/} ;; esac
  case $K_KEY in */) K_KEY="" ;; esac
  K_BUCKET=${K_BUCKET%%/*}
}

k_bucket_aws() {
  k_have aws || return 1
  k_key "$1"
  if [ -n "$K_KEY" ] && aws ${K_ENDPOINT:+--endpoint-url "$K_ENDPOINT"} s3api head-object \
    --bucket "$K_BUCKET" --key "$K_KEY" >/dev/null 2>&1; then
    aws ${K_ENDPOINT:+--endpoint-url "$K_ENDPOINT"} s3 cp --only-show-errors "$1" "$K_TMP/object" \
      && mv -f "$K_TMP/object" "$2"
  else
    mkdir -p "$2" && aws ${K_ENDPOINT:+--endpoint-url "$K_ENDPOINT"} s3 sync --only-show-errors "$1" "$2"
  fi
}

k_bucket_gcloud() {
  k_have gcloud || return 1
  k_key "$1"
  if [ -n "$K_KEY" ] && gcloud storage objects describe "$1" >/dev/null 2>&1; then
    gcloud storage cp --quiet "$1" "$K_TMP/object" && mv -f "$K_TMP/object" "$2"
  else
    mkdir -p "$2" && gcloud storage rsync --recursive --quiet "$1" "$2"
  fi
}

# k_bucket_py URL DEST MODULE: the object URL names into the file DEST, or every object
# under URL into the directory DEST, through python3's SDK.
k_bucket_py() {
  k_have "$K_PY" && "$K_PY" -c "import $3" 2>/dev/null || return 1
  "$K_PY" - "$1" "$2" <<'KONDUKTOR_PY'
import os, sys
scheme, _, rest = sys.argv[1].partition("://")
bucket, _, key = rest.partition("/")
prefix = key.rstrip("/") + "/" if key else ""
endpoint = os.environ.get("K_ENDPOINT") or None
if scheme == "s3":
    import boto3, botocore.exceptions
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ.get("K_REGION") or None)
    def is_object(key):
        try:
            s3.head_object(Bucket=bucket, Key=key)
            return True
        except botocore.exceptions.ClientError:
            return False
    def keys():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]
    fetch = lambda key, dest: s3.download_file(bucket, key, dest)
else:
    from google.cloud import storage
    if endpoint:
        from google.auth.credentials import AnonymousCredentials
        client = storage.Client(project="konduktor", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint})
    else:
        client = storage.Client()
    is_object = lambda key: client.bucket(bucket).blob(key).exists()
    keys = lambda: [b.name for b in client.list_blobs(bucket, prefix=prefix)]
    fetch = lambda key, dest: client.bucket(bucket).blob(key).download_to_filename(dest)
dest = sys.argv[2]
if key and not key.endswith("/") and is_object(key):
    fetch(key, dest + ".konduktor-part")
    os.replace(dest + ".konduktor-part", dest)
    sys.exit(0)
root = os.path.realpath(dest)
os.makedirs(root, exist_ok=True)
for key in keys():
    rel = key[len(prefix):]
    path = os.path.realpath(os.path.join(root, rel))
    if not rel or rel.endswith("/"):
        continue
    if not path.startswith(root + os.sep):
        sys.exit(f"konduktor: {key} would leave {root}; refusing it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fetch(key, path)
KONDUKTOR_PY
}

# k_run RUN [SETUP]: in the workdir, with bash when the image has it, SETUP first: if it
# fails, its exit code is the task's and RUN does not start.
k_run() {
  rm -rf "$K_TMP"
  K_TMP=""
  cd "$HOME/konduktor_workdir" 2>/dev/null || cd "$HOME" || k_fail "cannot enter $HOME"
  K_SH="sh"
  if k_have bash; then K_SH=bash; fi
  k_default_secrets
  if [ -n "${2:-}" ]; then k_setup "$2"; fi
  if [ -z "${KONDUKTOR_OUTPUT_DIR:-}" ]; then exec "$K_SH" "$1"; fi
  trap - INT TERM  # as when run: was exec'd: a signal reaches run: as it would PID 1
  "$K_SH" "$1"
  K_CODE=$?
  k_result "$K_CODE"
  return "$K_CODE"  # the script's last command: its status is the pod's
}

# k_result CODE: as Konduktor's pods do for its controller's return values, the termination
# message is {"exit":CODE}, with "value": the task's $KONDUKTOR_OUTPUT_DIR/result.json when
# it wrote one (or "error":"ResultTooLarge" above 3500 bytes: the message holds 4096).
k_result() {
  K_RV="$KONDUKTOR_OUTPUT_DIR/result.json"
  if [ -s "$K_RV" ] && [ -f "$K_RV" ]; then
    K_SIZE=$(wc -c <"$K_RV" | tr -d ' ')
    if [ "$K_SIZE" -gt 3500 ]; then
      K_LINE=$(printf '{"exit":%d,"error":"ResultTooLarge","size":%d}' "$1" "$K_SIZE")
    else
      K_LINE=$(printf '{"exit":%d,"value":%s}' "$1" "$(cat "$K_RV")")
    fi
  else
    K_LINE=$(printf '{"exit":%d}' "$1")
  fi
  { printf '%s' "$K_LINE" >"$K_TERMLOG"; } 2>/dev/null
}

# k_default_secrets: as Konduktor's pods do, each default Secret mounted in
# $KONDUKTOR_DEFAULT_SECRETS/NAME is copied to $KONDUKTOR_DEFAULT_SECRETS_EXPANDED/NAME (its
# payload.zip, which `secret create --from-directory` makes, unpacked), which
# KONDUKTOR_DEFAULT_SECRETS then names.
k_default_secrets() {
  [ -n "${KONDUKTOR_DEFAULT_SECRETS_EXPANDED:-}" ] || return 0
  [ -d "${KONDUKTOR_DEFAULT_SECRETS:-}" ] || return 0
  for K_SRC in "$KONDUKTOR_DEFAULT_SECRETS"/*; do
    [ -d "$K_SRC" ] || continue
    K_DST="$KONDUKTOR_DEFAULT_SECRETS_EXPANDED/${K_SRC##*/}"
    mkdir -p "$K_DST" || k_fail "cannot create $K_DST"
    if [ -f "$K_SRC/payload.zip" ]; then
      if k_have unzip; then
        unzip -oq "$K_SRC/payload.zip" -d "$K_DST"
      else
        "$K_PY" -m zipfile -e "$K_SRC/payload.zip" "$K_DST"
      fi || k_fail "default Secret ${K_SRC##*/}: cannot unpack its payload.zip (the image needs unzip or python3)"
    else
      for K_KEY in "$K_SRC"/*; do
        [ ! -f "$K_KEY" ] || cp -L "$K_KEY" "$K_DST/" || k_fail "cannot copy $K_KEY"
      done
    fi
  done
  export KONDUKTOR_DEFAULT_SECRETS="$KONDUKTOR_DEFAULT_SECRETS_EXPANDED"
}

# k_setup SCRIPT: run it in the foreground (a Ctrl-C at the terminal reaches it and what it
# started, as it reaches run:); if it fails, end with its exit code, saying so.
k_setup() {
  "$K_SH" "$1"
  K_CODE=$?
  [ "$K_CODE" = 0 ] && return 0
  K_LINE="konduktor: setup failed with exit code $K_CODE; run: not started"
  printf '%s\n' "$K_LINE" >&2
  { printf '%s\n' "$K_LINE" >"$K_TERMLOG"; } 2>/dev/null
  exit "$K_CODE"
}
