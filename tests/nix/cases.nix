# The cases tests/nix/check.sh evaluates. Each case is a list of NixOS modules
# plus what must come out:
#   failed     substrings of the assertion messages that must fire, one each,
#              and no other assertion may fire
#   warnings   substrings of warnings that must appear
#   checks     config -> list of problems (empty when all is well)
#   runCheck   run `sni-edge check` on the generated file (default: when no
#              assertion is expected to fire)
#   canExecute whether the stub build machine can run the package; when it
#              can, the config file is the build-time check's script
#   lab        this case's generated file is the lab's config
{ lib }:

let
  sniEdge = "/stub/sni-edge/bin/sni-edge";

  # A valid config that each assertion case breaks in one place.
  base = {
    services.sniEdge = {
      enable = true;
      settings = {
        routes = [
          {
            name = "app";
            names = [ "app.example.test" ];
            backend = "https";
            acme_backend = "http";
          }
        ];
        backends = {
          https.servers = [ "192.0.2.20:443" ];
          http.servers = [ "192.0.2.20:80" ];
        };
      };
    };
  };

  k3sBase = {
    services.k3s = {
      enable = true;
      role = "server";
    };
    services.sniEdge.k3sTrust = {
      enable = true;
      gatewayAddresses = [ "192.0.2.1" ];
    };
  };

  expect = cond: problem: lib.optional (!cond) problem;
  show = v: builtins.toJSON v;

  # The service as nixos/module.nix promises it: fixed config path, check
  # before reload, hardening, reload (not restart) on config change.
  serviceChecks =
    config:
    let
      svc = config.systemd.services.sni-edge;
      sc = svc.serviceConfig;
      file = toString config.services.sniEdge.configFile;
    in
    expect (sc.ExecStart == "${sniEdge} run --config /etc/sni-edge/config.json") "ExecStart is ${show sc.ExecStart}"
    ++ expect (
      sc.ExecReload == [
        "${sniEdge} check --config /etc/sni-edge/config.json"
        "/stub/coreutils/bin/kill -HUP $MAINPID"
      ]
    ) "ExecReload is ${show sc.ExecReload}"
    ++ expect (map toString svc.reloadTriggers == [ file ]) "reloadTriggers is ${show svc.reloadTriggers}"
    ++ expect (svc.restartTriggers == [ ]) "restartTriggers is not empty"
    ++ expect (
      toString config.environment.etc."sni-edge/config.json".source == file
    ) "/etc/sni-edge/config.json is not the config file"
    ++ expect (sc.Type == "simple" && !(sc ? NotifyAccess)) "Type is ${show sc.Type}"
    ++ expect (svc.wantedBy == [ "multi-user.target" ]) "wantedBy is ${show svc.wantedBy}"
    ++ lib.concatLists (
      lib.mapAttrsToList (k: v: expect ((sc.${k} or null) == v) "serviceConfig.${k} is ${show (sc.${k} or null)}, want ${show v}")
        {
          DynamicUser = true;
          AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
          CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectProc = "invisible";
          RestrictAddressFamilies = [
            "AF_INET"
            "AF_INET6"
            "AF_UNIX"
          ];
          RestrictNamespaces = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
          UMask = "0077";
          LimitNOFILE = 1048576;
        }
    )
    ++ expect (!(sc ? PrivateUsers)) "PrivateUsers is set: it breaks CAP_NET_BIND_SERVICE";

  ports = want: config: expect (config.networking.firewall.allowedTCPPorts == want) "firewall opens ${show config.networking.firewall.allowedTCPPorts}, want ${show want}";
in
{
  default = {
    modules = [ ];
    runCheck = false;
    checks =
      config:
      expect (!(config.systemd.services ? sni-edge)) "a service exists although enable = false"
      ++ expect (!(config.environment.etc ? "sni-edge/config.json")) "/etc/sni-edge/config.json exists although enable = false"
      ++ ports [ ] config
      ++ expect (config.services.k3s.manifests == { }) "a k3s manifest exists although k3sTrust is off";
  };

  seed-000 = {
    modules = [ ../../nixos/examples/seed-000.nix ];
    checks =
      config:
      serviceChecks config
      ++ ports [
        80
        443
      ] config
      ++ expect (
        lib.hasPrefix "${builtins.storeDir}/" (toString (lib.head config.services.sniEdge.settings.routes).names_file)
        || builtins.isPath (lib.head config.services.sniEdge.settings.routes).names_file
      ) "names_file is not a Nix path";
  };

  seed-001 = {
    modules = [ ../../nixos/examples/seed-001.nix ];
    checks =
      config:
      serviceChecks config
      ++ ports [
        80
        443
      ] config
      ++ expect (
        builtins.length config.services.sniEdge.settings.backends.kube.servers == 3
      ) "kube does not have three servers";
  };

  # With a build machine that can run the package, the config file is the
  # output of the build-time check, whose script runs `sni-edge check` on the
  # generated JSON.
  build-time-check = {
    modules = [ ../../nixos/examples/seed-000.nix ];
    canExecute = true;
    runCheck = false;
    checks =
      config:
      let
        script = builtins.readFile config.services.sniEdge.configFile;
      in
      expect (
        builtins.match ".*${sniEdge} check --config ${builtins.storeDir}/[a-z0-9]+-sni-edge[.]json\n.*" script != null
      ) "the build-time check does not run `sni-edge check` on the generated file: ${script}"
      ++ serviceChecks config;
  };

  # A names_file outside the store is fine once the build-time check is off.
  names-file-outside-store = {
    modules = [
      base
      {
        services.sniEdge.checkConfig = false;
        services.sniEdge.settings.routes = lib.mkForce [
          {
            names_file = "/etc/sni-edge/allowed-domains.txt";
            backend = "https";
          }
        ];
      }
    ];
    canExecute = true;
    runCheck = false;
    checks =
      config:
      expect (
        (builtins.fromJSON (builtins.readFile config.services.sniEdge.configFile)).routes == [
          {
            names_file = "/etc/sni-edge/allowed-domains.txt";
            backend = "https";
          }
        ]
      ) "with checkConfig = false the config file is not the generated JSON";
  };

  # Unset options are absent from the file; freeform keys pass through.
  nulls-dropped = {
    modules = [
      base
      { services.sniEdge.settings.http.redirect_status = 301; }
    ];
    checks =
      config:
      let
        json = builtins.fromJSON (builtins.readFile config.services.sniEdge.configFile);
      in
      expect (
        json.routes == [
          {
            name = "app";
            names = [ "app.example.test" ];
            backend = "https";
            acme_backend = "http";
          }
        ]
      ) "routes are ${show json.routes}"
      ++ expect (json.backends.https == { servers = [ "192.0.2.20:443" ]; }) "backends.https is ${show json.backends.https}"
      ++ expect (json.timeouts == { } && json.limits == { } && json.log == { }) "unset groups are not empty objects"
      ++ expect (!(json ? default_backend) && !(json ? metrics)) "null keys are in the file"
      ++ expect (json.http == { redirect_status = 301; }) "freeform http is ${show (json.http or null)}"
      ++ expect (builtins.length json.listeners == 4) "default listeners are ${show json.listeners}"
      ++ ports [ ] config;
  };

  lab = {
    modules = [ ./lab.nix ];
    lab = true;
    checks =
      config:
      serviceChecks config
      ++ ports [
        80
        443
      ] config;
  };

  k3s-trust = {
    modules = [ k3sBase ];
    runCheck = false;
    manifest = "sni-edge-traefik-proxy-protocol";
    checks =
      config:
      let
        m = config.services.k3s.manifests.sni-edge-traefik-proxy-protocol;
      in
      expect (m.target == "sni-edge-traefik-proxy-protocol.yaml") "manifest target is ${m.target}"
      ++ expect (!(config.systemd.services ? sni-edge)) "k3sTrust alone starts a gateway";
  };

  k3s-example = {
    modules = [ ../../nixos/examples/k3s-node.nix ];
    runCheck = false;
    manifest = "sni-edge-traefik-proxy-protocol";
    checks = config: ports [ 80 443 ] config;
  };

  # One case per assertion, each violating it and nothing else.
  assert-listeners-empty = {
    modules = [
      base
      { services.sniEdge.settings.listeners = [ ]; }
    ];
    failed = [ "listeners must not be empty" ];
  };
  assert-firewall-port = {
    modules = [
      base
      {
        services.sniEdge.openFirewall = true;
        services.sniEdge.settings.listeners = [
          {
            address = "gateway.test";
            protocol = "tls";
          }
        ];
      }
    ];
    failed = [ "openFirewall needs every listener address to end in `:port`" ];
  };
  assert-default-backend = {
    modules = [
      base
      { services.sniEdge.settings.default_backend = "nowhere"; }
    ];
    failed = [ "default_backend = \"nowhere\" is not one of" ];
  };
  assert-names-file-outside-store = {
    modules = [
      base
      {
        services.sniEdge.settings.routes = lib.mkForce [
          {
            names_file = "/etc/sni-edge/allowed-domains.txt";
            backend = "https";
          }
        ];
      }
    ];
    failed = [ "checkConfig needs every names_file in the Nix store" ];
  };
  assert-route-backend = {
    modules = [
      base
      {
        services.sniEdge.settings.routes = lib.mkForce [
          {
            names = [ "app.example.test" ];
            backend = "nowhere";
          }
        ];
      }
    ];
    failed = [ "routes.0.backend = \"nowhere\" is not one of" ];
  };
  assert-route-acme-backend = {
    modules = [
      base
      {
        services.sniEdge.settings.routes = lib.mkForce [
          {
            name = "app";
            names = [ "app.example.test" ];
            backend = "https";
            acme_backend = "nowhere";
          }
        ];
      }
    ];
    failed = [ "routes.0 (app).acme_backend = \"nowhere\" is not one of" ];
  };
  assert-route-no-names = {
    modules = [
      base
      {
        services.sniEdge.settings.routes = lib.mkForce [ { backend = "https"; } ];
      }
    ];
    failed = [ "routes.0 has neither names nor names_file" ];
  };
  assert-backend-servers = {
    modules = [
      base
      { services.sniEdge.settings.backends.http.servers = lib.mkForce [ ]; }
    ];
    failed = [ "backends.http.servers must not be empty" ];
  };
  assert-k3s-addresses = {
    modules = [
      k3sBase
      { services.sniEdge.k3sTrust.gatewayAddresses = lib.mkForce [ ]; }
    ];
    failed = [ "gatewayAddresses must not be empty" ];
  };
  assert-k3s-wildcard = {
    modules = [
      k3sBase
      { services.sniEdge.k3sTrust.gatewayAddresses = lib.mkForce [ "0.0.0.0/0" ]; }
    ];
    failed = [ "must not contain 0.0.0.0/0 or ::/0" ];
  };
  assert-k3s-role = {
    modules = [
      k3sBase
      { services.k3s.role = lib.mkForce "agent"; }
    ];
    failed = [ "needs services.k3s.role = \"server\"" ];
  };
  assert-k3s-traefik-disabled = {
    modules = [
      k3sBase
      { services.k3s.disable = [ "traefik" ]; }
    ];
    failed = [ "services.k3s.disable contains \"traefik\"" ];
  };

  warn-acme-without-http = {
    modules = [
      base
      {
        services.sniEdge.settings.listeners = [
          {
            address = "0.0.0.0:443";
            protocol = "tls";
          }
        ];
      }
    ];
    warnings = [ "no listener has protocol = \"http\"" ];
  };
}
