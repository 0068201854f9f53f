# The config file of both modules (gateway and agent): `settings` written as
# JSON with nulls dropped (optional keys are declared with `default = null`,
# so an unset option is absent from the file and the binary's default
# applies), then checked at build time like nixpkgs' vector and caddy modules: the program's own checker runs
# while the system is built, so a bad config fails nixos-rebuild before
# anything is switched. Returns the file itself when the check is off or the
# build machine cannot run the package (cross-compiling, as caddy skips
# `caddy fmt`).
#
# A private key is a systemd credential that exists only while the service
# runs, so where the config names one (keyPath, a jq path such as
# ".tunnel.key_file"), the check runs on a copy that points at a throwaway key
# made for it with `sni-edge keygen`; the file that is installed keeps the
# credential's path.
{ pkgs, lib }:

{
  name,
  package,
  settings,
  check,
  keyPath ? null,
}:

let
  dropNulls =
    value:
    if builtins.isAttrs value then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if builtins.isList value then
      map dropNulls value
    else
      value;
  file = (pkgs.formats.json { }).generate "${name}.json" (dropNulls settings);
  exe = lib.getExe package;
  canRunPackage = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
in
if !(check && canRunPackage) then
  file
else if keyPath == null then
  pkgs.runCommand "${name}-checked.json" { preferLocalBuild = true; } ''
    ${exe} check --config ${file}
    ln -s ${file} $out
  ''
else
  pkgs.runCommand "${name}-checked.json" { preferLocalBuild = true; } ''
    ${exe} keygen --out "$TMPDIR/throwaway-key" >/dev/null
    ${lib.getExe pkgs.jq} --arg key "$TMPDIR/throwaway-key" '${keyPath} = $key' ${file} >"$TMPDIR/config.json"
    ${exe} check --config "$TMPDIR/config.json"
    ln -s ${file} $out
  ''
