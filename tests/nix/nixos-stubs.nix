# Minimal declarations of the NixOS options that nixos/module.nix and
# nixos/k3s-traefik.nix set or read, so both modules can be evaluated with
# nothing but nixpkgs' lib/ (nix-community/nixpkgs.lib). Each type mirrors the
# real declaration in nixpkgs; the file each one was read from is named above
# it. Options the modules do not touch are left out on purpose: a module that
# starts setting one fails here until it is declared, with its real type.
#
# Also a stand-in for the few parts of `pkgs` the modules use. `formats.json`
# keeps the real type (pkgs/pkgs-lib/formats.nix) but writes the file with
# builtins.toFile instead of running jq; `runCommand` writes its script to a
# file, so a test can read what the build-time check would run.
{ lib }:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-lib.nix
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # nixos/lib/systemd-unit-options.nix (checkService)
  checkService =
    v:
    let
      valueOneOf =
        name: values: !(v ? ${name}) || lib.elem v.${name} values;
    in
    valueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ]
    && valueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ];

  unitNames = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };

  # nixos/lib/systemd-unit-options.nix: the parts of stage2CommonUnitOptions
  # (sharedOptions + commonUnitOptions + restartTriggers, reloadTriggers)
  # that the modules use, for every kind of unit.
  stage2CommonUnitOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wantedBy = unitNames;
      requiredBy = unitNames;
      wants = unitNames;
      requires = unitNames;
      after = unitNames;
      before = unitNames;
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };

  # nixos/lib/systemd-unit-options.nix: stage2ServiceOptions
  # (stage2CommonUnitOptions + serviceOptions + stopIfChanged, ...).
  serviceModule = {
    imports = [ stage2CommonUnitOptions ];
    options = {
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      environment = mkOption {
        type =
          with types;
          attrsOf (
            nullOr (oneOf [
              str
              path
              package
            ])
          );
        default = { };
      };
      path = mkOption {
        type =
          with types;
          listOf (oneOf [
            package
            str
          ]);
        default = [ ];
      };
    };
  };

  # nixos/lib/systemd-unit-options.nix: stage2SocketOptions
  # (stage2CommonUnitOptions + socketOptions).
  socketModule = {
    imports = [ stage2CommonUnitOptions ];
    options = {
      listenStreams = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      listenDatagrams = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      socketConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
    };
  };

  # nixos/modules/system/etc/etc.nix
  etcModule =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption { type = types.str; };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        source = mkOption { type = types.path; };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
      };
      config.target = lib.mkDefault name;
    };

  # nixos/modules/services/cluster/rancher/default.nix (manifestModule); the
  # real one renders `content` with pkgs.formats.yaml_1_2, here JSON (a YAML
  # subset) written with builtins.toFile.
  manifestModule =
    {
      name,
      config,
      options,
      ...
    }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption { type = types.nonEmptyStr; };
        content = mkOption {
          type = with types; nullOr (either attrs (listOf attrs));
          default = null;
        };
        source = mkOption { type = types.path; };
      };
      config = {
        target = lib.mkDefault (
          if lib.hasSuffix ".yaml" name || lib.hasSuffix ".yml" name || lib.hasSuffix ".json" name then
            name
          else
            name + ".yaml"
        );
        source = lib.mkIf (config.content != null) (
          lib.mkDerivedConfig options.content (
            c: builtins.toFile "${name}-manifest.yaml" (builtins.toJSON c)
          )
        );
      };
    };
in
{
  module = {
    options = {
      # nixos/modules/misc/assertions.nix
      assertions = mkOption {
        type = types.listOf types.unspecified;
        internal = true;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        internal = true;
        default = [ ];
      };

      # nixos/modules/services/networking/firewall.nix (commonOptions)
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
      };

      # nixos/modules/system/etc/etc.nix
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule etcModule);
        default = { };
      };

      # nixos/modules/system/boot/systemd.nix (systemd.services and
      # systemd.sockets, of nixos/lib/systemd-types.nix's services and
      # sockets), with the unit options above.
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule serviceModule);
        default = { };
      };
      systemd.sockets = mkOption {
        type = types.attrsOf (types.submodule socketModule);
        default = { };
      };

      # nixos/modules/services/cluster/rancher/default.nix and k3s.nix
      services.k3s = {
        enable = lib.mkEnableOption "k3s";
        role = mkOption {
          type = types.enum [
            "server"
            "agent"
          ];
          default = "server";
        };
        disable = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        manifests = mkOption {
          type = types.attrsOf (types.submodule manifestModule);
          default = { };
        };
      };
    };
  };

  pkgs =
    {
      # false: the build machine cannot run the package (as when cross
      # compiling), so the module skips the build-time check and the config
      # file is the generated JSON itself.
      canExecute ? true,
    }:
    {
      formats.json =
        { }:
        {
          type =
            let
              valueType =
                with types;
                nullOr (oneOf [
                  bool
                  int
                  float
                  str
                  path
                  (attrsOf valueType)
                  (listOf valueType)
                ])
                // {
                  description = "JSON value";
                };
            in
            valueType;
          generate = name: value: builtins.toFile name (builtins.toJSON value);
        };

      runCommand = name: _env: script: builtins.toFile name script;

      stdenv = {
        buildPlatform.canExecute = _: canExecute;
        hostPlatform = { };
      };

      coreutils = "/stub/coreutils";

      # Stands in for the package the flake builds.
      sni-edge = {
        type = "derivation";
        name = "sni-edge-stub";
        outPath = "/stub/sni-edge";
        meta.mainProgram = "sni-edge";
      };
    };
}
