#!/bin/sh
# konduktor pod startup script: fetch, verify and place the launch's files, then run `run:`.
# Rendered from a launch plan by konduktor.pod.render; the functions below are fixed, the
# calls at the end come from the plan. POSIX sh (dash, busybox ash); needs coreutils and
# tar, plus a way to fetch (cp for file://, curl, wget, python3, aws or gcloud) and to
# decompress zstd (zstd, or python3 with zstandard or compression.zstd).
set -u

K_EXIT=97  # sync failed: nothing of run: has started
K_CRED=${KONDUKTOR_CREDENTIALS_DIR:-/run/konduktor/credentials}
K_STATE="$HOME/.konduktor/pod"
K_PY=${KONDUKTOR_PYTHON:-python3}  # the local target names its own Python
K_TMP=""
K_STAGE=""

k_log() { [ -n "${KONDUKTOR_QUIET:-}" ] || printf 'konduktor: %s\n' "$*" >&2; }
k_fail() { printf 'konduktor: sync failed: %s\n' "$*" >&2; exit "$K_EXIT"; }
k_have() { command -v "$1" >/dev/null 2>&1; }
k_cleanup() {
  if [ -n "$K_STAGE" ]; then rm -rf "$K_STAGE"; fi
  if [ -n "$K_TMP" ]; then rm -rf "$K_TMP"; fi
}
trap k_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

k_start() {
  mkdir -p "$K_STATE/done" || k_fail "cannot create $K_STATE; is \$HOME ($HOME) writable?"
  K_TMP=$(mktemp -d "$K_STATE/tmp.XXXXXX") || k_fail "cannot create a temporary directory in $K_STATE"
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

# k_get URL HTTPS SHA256 DEST: fetch and verify, or fail naming the object.
k_get() {
  k_fetch "$1" "$2" "$4" || {
    if [ -z "$K_TRIED" ]; then
      k_fail "cannot fetch $1: the image has none of curl, wget, python3 (with boto3 or google-cloud-storage), aws or gcloud; add curl to the image (apt-get install curl)"
    fi
    k_fail "cannot fetch $1 (tried:$K_TRIED); see the messages above"
  }
  k_sha256 "$4" || k_fail "cannot compute the sha256 of $1"
  [ "$K_SUM" = "$3" ] || k_fail "$1 is corrupt: sha256 $K_SUM, expected $3; delete it from the store and launch again"
}

# Decompress a zstd file: zstd; python3 with zstandard or compression.zstd; as root, install zstd.
k_unzstd() {
  if k_have zstd; then zstd -q -d -c "$1" >"$2" && return 0; fi
  if k_have "$K_PY" && "$K_PY" - "$1" "$2" <<'KONDUKTOR_PY'; then return 0; fi
import shutil, sys
try:
    import zstandard
    with open(sys.argv[1], "rb") as f, open(sys.argv[2], "wb") as out:
        zstandard.ZstdDecompressor().copy_stream(f, out)
except ImportError:
    from compression import zstd  # Python 3.14+
    with zstd.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as out:
        shutil.copyfileobj(f, out, 1 << 20)
KONDUKTOR_PY
  if ! k_have zstd && k_install zstd; then zstd -q -d -c "$1" >"$2" && return 0; fi
  k_fail "cannot decompress $3: the image has no zstd and no python3 with zstandard; add zstd to the image (apt-get install zstd, apk add zstd) or pip install zstandard"
}

k_install() {
  [ "$(id -u)" = 0 ] || return 1
  k_log "installing $1 with the image's package manager"
  if k_have apt-get; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >/dev/null 2>&1
  elif k_have apk; then apk add --no-cache -q "$1" >/dev/null 2>&1
  elif k_have dnf; then dnf install -y -q "$1" >/dev/null 2>&1
  elif k_have yum; then yum install -y -q "$1" >/dev/null 2>&1
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

# k_layer URL HTTPS SHA256: fetch, verify, and apply one layer onto the staging directory.
k_layer() {
  [ -n "$K_SKIP" ] && return 0
  k_get "$1" "$2" "$3" "$K_TMP/layer.zst"
  k_unzstd "$K_TMP/layer.zst" "$K_TMP/layer.tar" "$1"
  rm -f "$K_TMP/layer.zst"
  tar -tf "$K_TMP/layer.tar" >"$K_TMP/names" || k_fail "$1 is not a readable tar archive"
  while IFS= read -r name; do
    case /$name/ in
      //* | */../*) k_fail "$1 holds $name, which would leave the destination; refusing it" ;;
    esac
    k_unlinked "$name" "$1"
    case ${name##*/} in
      .wh.*) K_BASE=${name##*/}; rm -rf "${K_STAGE:?}/$(k_dir "$name")${K_BASE#.wh.}" ;;
      *) if [ -L "$K_STAGE/$name" ]; then rm -f "$K_STAGE/$name"; fi ;;
    esac
  done <"$K_TMP/names"
  tar -xmf "$K_TMP/layer.tar" -C "$K_STAGE" || k_fail "cannot extract $1"
  while IFS= read -r name; do
    case ${name##*/} in .wh.*) rm -f "$K_STAGE/$name" ;; esac
  done <"$K_TMP/names"
  rm -f "$K_TMP/layer.tar"
}

k_dir() {
  case $1 in */*) printf '%s/' "${1%/*}" ;; esac
}

# Nothing is written or deleted through a symlink: no parent of NAME may be one.
k_unlinked() {
  K_REST=${1%/}
  K_AT=$K_STAGE
  while :; do
    case $K_REST in */*) ;; *) return 0 ;; esac
    K_AT="$K_AT/${K_REST%%/*}"
    K_REST=${K_REST#*/}
    [ -L "$K_AT" ] && k_fail "$2: ${K_AT#"$K_STAGE"/} is a symlink in an earlier layer; refusing to write through it"
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

# k_file TARGET URL HTTPS SHA256 MODE: one mounted file.
k_file() {
  K_TARGET=$1
  if [ -f "$K_TARGET" ] && k_sha256 "$K_TARGET" && [ "$K_SUM" = "$4" ]; then
    chmod "$5" "$K_TARGET"
    return 0
  fi
  k_get "$2" "$3" "$4" "$K_TMP/file"
  if ! { mkdir -p "$(dirname "$K_TARGET")" && chmod "$5" "$K_TMP/file" \
    && mv -f "$K_TMP/file" "$K_TARGET"; }; then
    k_fail "cannot place $K_TARGET"
  fi
  k_log "placed $K_TARGET"
}

# k_bucket TARGET URL MARK: a bucket prefix copied as is into TARGET.
k_bucket() {
  K_TARGET=$1
  K_MARK="$K_STATE/done/bucket-$3"
  if [ -f "$K_MARK" ] && [ -d "$K_TARGET" ]; then return 0; fi
  mkdir -p "$K_TARGET" || k_fail "cannot create $K_TARGET"
  case $2 in
    s3://*) k_have aws && aws ${K_ENDPOINT:+--endpoint-url "$K_ENDPOINT"} s3 sync --only-show-errors "$2" "$K_TARGET" ;;
    gs://*) k_have gcloud && gcloud storage rsync --recursive --quiet "$2" "$K_TARGET" ;;
  esac || k_fail "cannot copy $2 to $1: it needs the aws CLI (s3://) or gcloud (gs://) in the image, and credentials (konduktor check s3|gs)"
  : >"$K_MARK"
  k_log "placed $K_TARGET from $2"
}

# Run `run:` in the workdir, with bash when the image has it.
k_run() {
  rm -rf "$K_TMP"
  K_TMP=""
  cd "$HOME/konduktor_workdir" 2>/dev/null || cd "$HOME" || k_fail "cannot enter $HOME"
  if k_have bash; then exec bash "$1"; fi
  exec sh "$1"
}
