# Minimal declarations of the NixOS options that nixos/module.nix and
# nixos/k3s-traefik.nix set or read, so both modules can be evaluated with
# nothing but nixpkgs' lib/ (nix-community/nixpkgs.lib). Each type mirrors the
# real declaration in nixpkgs; the file each one was read from is named above
# it. Also the options the VM tests' nodes (tests/vm/) set, so that their node
# configurations evaluate here too. Options neither touches are left out on
# purpose: a module or node that starts setting one fails here until it is
# declared, with its real type.
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
      valueOneOf = name: values: !(v ? ${name}) || lib.elem v.${name} values;
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

  # nixos/modules/services/web-servers/nginx/vhost-options.nix and
  # location-options.nix: the parts tests/vm/gateway.nix sets.
  nginxVhost = {
    options = {
      serverName = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      serverAliases = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      default = mkOption {
        type = types.bool;
        default = false;
      };
      onlySSL = mkOption {
        type = types.bool;
        default = false;
      };
      # The real ones are types.path without a default (nginx reads them only
      # for SSL hosts); null here stands for unset, because check.sh forces
      # every value of a VM node's config.
      sslCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      sslCertificateKey = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      listen = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              addr = mkOption { type = types.str; };
              port = mkOption {
                type = types.nullOr types.port;
                default = null;
              };
              ssl = mkOption {
                type = types.bool;
                default = false;
              };
              proxyProtocol = mkOption {
                type = types.bool;
                default = false;
              };
              extraParameters = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        );
        default = [ ];
      };
      locations = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.return = mkOption {
              type =
                with types;
                nullOr (oneOf [
                  str
                  int
                ]);
              default = null;
            };
          }
        );
        default = { };
      };
    };
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
          lib.mkDerivedConfig options.content (c: builtins.toFile "${name}-manifest.yaml" (builtins.toJSON c))
        );
      };
    };

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

      # nixos/modules/config/system-path.nix, nixos/modules/config/shells-environment.nix
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment.sessionVariables = mkOption {
        type =
          with types;
          attrsOf (oneOf [
            (listOf (oneOf [
              int
              str
              path
            ]))
            int
            str
            path
          ]);
        default = { };
      };

      # nixos/modules/services/networking/firewall.nix
      networking.firewall.enable = mkOption {
        type = types.bool;
        default = true;
      };
      networking.firewall.trustedInterfaces = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };

      # nixos/modules/system/boot/systemd/tmpfiles.nix
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };

      # nixos/modules/tasks/network-interfaces.nix (interfaceOpts, addrOpts)
      networking.interfaces = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.ipv4.addresses = mkOption {
              type = types.listOf (
                types.submodule {
                  options = {
                    address = mkOption { type = types.str; };
                    prefixLength = mkOption { type = types.addCheck types.int (n: n >= 0 && n <= 32); };
                  };
                }
              );
              default = [ ];
            };
          }
        );
        default = { };
      };

      # nixos/modules/virtualisation/qemu-vm.nix
      virtualisation = {
        vlans = mkOption {
          type = types.listOf types.ints.unsigned;
          default = [ 1 ];
        };
        memorySize = mkOption {
          type = types.ints.positive;
          default = 1024;
        };
        diskSize = mkOption {
          type = types.ints.positive;
          default = 1024;
        };
        cores = mkOption {
          type = types.ints.positive;
          default = 1;
        };
      };

      # nixos/modules/system/activation/specialisation.nix; check.sh evaluates
      # each specialisation's configuration as a node of its own.
      specialisation = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              inheritParentConfig = mkOption {
                type = types.bool;
                default = true;
              };
              configuration = mkOption {
                type = types.deferredModule;
                default = { };
              };
            };
          }
        );
        default = { };
      };

      # nixos/modules/services/web-servers/nginx/default.nix
      services.nginx = {
        enable = lib.mkEnableOption "nginx";
        appendHttpConfig = mkOption {
          type = types.lines;
          default = "";
        };
        virtualHosts = mkOption {
          type = types.attrsOf (types.submodule nginxVhost);
          default = { };
        };
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
        package = mkOption {
          type = types.package;
          default = pkgsStub.k3s;
        };
        nodeIP = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
        extraFlags = mkOption {
          type = with types; either str (listOf str);
          default = [ ];
        };
        images = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
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

      # The one derivation whose output is read at evaluation time (the VM
      # tunnel test's keys, read back with import from derivation) cannot be
      # built here: its output is a fixture with public keys of the same form.
      runCommand =
        name: _env: script:
        if name == "sni-edge-tunnel-test-keys" then
          ./fixtures/tunnel-test-keys
        else
          builtins.toFile name script;
      writeText = name: text: builtins.toFile name text;

      stdenv = {
        buildPlatform.canExecute = _: canExecute;
        hostPlatform = { };
      };

      coreutils = "/stub/coreutils";

      # Stands in for the package the flake builds.
      sni-edge = pkgsStub.sni-edge;

      # What flake.nix, nixos/package.nix and the VM tests take from nixpkgs.
      # callPackage as nixpkgs' (lib.callPackageWith): the function's named
      # arguments from the package set, overridden by the given ones.
      callPackage =
        fn: args:
        let
          f = if builtins.isFunction fn then fn else import fn;
        in
        f (
          builtins.intersectAttrs (lib.functionArgs f) (pkgs {
            inherit canExecute;
          })
          // args
        );
      inherit lib;
      # Records its arguments; never reads `src` (lib.fileset needs
      # builtins.readFileType, which Nix 2.8 lacks).
      rustPlatform.buildRustPackage = attrs: {
        type = "derivation";
        name = "${attrs.pname}-${attrs.version}";
        outPath = "/stub/${attrs.pname}-${attrs.version}";
        inherit (attrs) pname version meta;
        # A function, so that forcing the whole package (deepSeq) leaves src alone.
        passthru.buildRustPackageArgs = _: attrs;
      };
      dockerTools.buildImage = attrs: {
        type = "derivation";
        name = "docker-image-${baseNameOf attrs.name}.tar.gz";
        outPath = "/stub/docker-image";
        imageName = attrs.name;
        imageTag = attrs.tag;
      };
      jq = stubPackage "jq" // {
        meta.mainProgram = "jq";
      };
      openssl = stubPackage "openssl";
      kubectl = stubPackage "kubectl";
      whoami = stubPackage "whoami";
      k3s = pkgsStub.k3s;
    };

  stubPackage = name: {
    type = "derivation";
    inherit name;
    outPath = "/stub/${name}";
  };

  pkgsStub = {
    sni-edge = {
      type = "derivation";
      name = "sni-edge-stub";
      outPath = "/stub/sni-edge";
      meta.mainProgram = "sni-edge";
    };
    k3s = stubPackage "k3s" // {
      airgap-images = stubPackage "k3s-airgap-images";
    };
  };
in
{
  inherit module pkgs;
}
