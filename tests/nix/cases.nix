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

  # Documented examples (nixos/examples/), each a valid config that the
  # assertion cases break in one place (see `fails`).
  kubeSuffix = ../../nixos/examples/kube-suffix.nix;
  k3sNode = ../../nixos/examples/k3s-node.nix;

  # A case in which `change` makes `example` fire exactly one assertion, the
  # one whose message contains `message`.
  fails = message: example: change: {
    modules = [
      example
      change
    ];
    failed = [ message ];
  };

  # A route that reads its names from a file outside the Nix store.
  outsideStore = [
    {
      names_file = "/etc/sni-edge/allowed-domains.txt";
      backend = "kube";
    }
  ];

  expect = cond: problem: lib.optional (!cond) problem;
  show = v: builtins.toJSON v;

  listenerAddresses = config: map (l: l.address) config.services.sniEdge.settings.listeners;

  # With socket activation (the default): a socket unit with one
  # ListenStream per listener, IPv6 sockets IPv6-only, the service tied to
  # it, restarted (not stopped and started) on change, and restarted when
  # the listeners change.
  socketChecks =
    config:
    let
      sock = config.systemd.sockets.sni-edge or null;
      svc = config.systemd.services.sni-edge;
      addresses = listenerAddresses config;
    in
    if sock == null then
      [ "no socket unit sni-edge although socketActivation is on" ]
    else
      expect (
        sock.listenStreams == addresses
      ) "listenStreams are ${show sock.listenStreams}, want ${show addresses}"
      ++ expect (sock.wantedBy == [ "sockets.target" ]) "the socket's wantedBy is ${show sock.wantedBy}"
      ++ expect (
        sock.socketConfig == {
          BindIPv6Only = "ipv6-only";
          Backlog = 4096;
          FreeBind = true;
        }
      ) "socketConfig is ${show sock.socketConfig}"
      ++ expect (svc.requires == [ "sni-edge.socket" ]) "the service requires ${show svc.requires}"
      ++ expect (lib.elem "sni-edge.socket" svc.after) "the service is not after sni-edge.socket: ${show svc.after}"
      ++ expect (
        !svc.stopIfChanged
      ) "stopIfChanged is true: a switch would stop the socket with the service"
      ++ expect (
        svc.restartTriggers == addresses
      ) "restartTriggers are ${show svc.restartTriggers}, want the listeners";

  # Without socket activation: no socket unit, the gateway binds alone.
  noSocketChecks =
    config:
    let
      svc = config.systemd.services.sni-edge;
    in
    expect (
      !(config.systemd.sockets ? sni-edge)
    ) "a socket unit exists although socketActivation = false"
    ++ expect (svc.requires == [ ]) "the service requires ${show svc.requires}"
    ++ expect (svc.after == [ "network-online.target" ]) "the service is after ${show svc.after}"
    ++ expect svc.stopIfChanged "stopIfChanged is false without socket activation"
    ++ expect (svc.restartTriggers == [ ]) "restartTriggers is not empty";

  # The service as nixos/module.nix promises it: fixed config path, check
  # before reload, hardening, reload (not restart) on config change,
  # Type=notify, socket activation unless it is turned off.
  serviceChecks =
    config:
    let
      svc = config.systemd.services.sni-edge;
      sc = svc.serviceConfig;
      file = toString config.services.sniEdge.configFile;
    in
    expect (
      sc.ExecStart == "${sniEdge} run --config /etc/sni-edge/config.json"
    ) "ExecStart is ${show sc.ExecStart}"
    ++ expect (
      sc.ExecReload == [
        "${sniEdge} check --config /etc/sni-edge/config.json"
        "/stub/coreutils/bin/kill -HUP $MAINPID"
      ]
    ) "ExecReload is ${show sc.ExecReload}"
    ++ expect (
      map toString svc.reloadTriggers == [ file ]
    ) "reloadTriggers is ${show svc.reloadTriggers}"
    ++ expect (
      toString config.environment.etc."sni-edge/config.json".source == file
    ) "/etc/sni-edge/config.json is not the config file"
    ++ expect (
      sc.Type == "notify" && sc.NotifyAccess == "main"
    ) "Type is ${show sc.Type}, NotifyAccess ${show (sc.NotifyAccess or null)}"
    ++ expect (svc.wantedBy == [ "multi-user.target" ]) "wantedBy is ${show svc.wantedBy}"
    # Hardening: the keys that matter most by value, the other switches by name.
    ++ lib.concatLists (
      lib.mapAttrsToList
        (
          k: v:
          expect ((sc.${k} or null) == v) "serviceConfig.${k} is ${show (sc.${k} or null)}, want ${show v}"
        )
        {
          DynamicUser = true;
          AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
          CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
          ProtectSystem = "strict";
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
        }
    )
    ++ map (k: "serviceConfig.${k} is not true") (
      lib.filter (k: (sc.${k} or null) != true) [
        "NoNewPrivileges"
        "ProtectHome"
        "PrivateTmp"
        "PrivateDevices"
        "ProtectKernelTunables"
        "ProtectKernelModules"
        "ProtectKernelLogs"
        "ProtectControlGroups"
        "RestrictNamespaces"
        "LockPersonality"
        "MemoryDenyWriteExecute"
      ]
    )
    ++ expect (!(sc ? PrivateUsers)) "PrivateUsers is set: it breaks CAP_NET_BIND_SERVICE"
    ++ (if config.services.sniEdge.socketActivation then socketChecks else noSocketChecks) config;

  ports =
    want: config:
    expect (
      config.networking.firewall.allowedTCPPorts == want
    ) "firewall opens ${show config.networking.firewall.allowedTCPPorts}, want ${show want}";

  # An enabled gateway from the examples or the lab: the service as promised,
  # 80 and 443 open.
  gatewayChecks =
    config:
    serviceChecks config
    ++ ports [
      80
      443
    ] config;
in
{
  default = {
    modules = [ ];
    runCheck = false;
    checks =
      config:
      expect (!(config.systemd.services ? sni-edge)) "a service exists although enable = false"
      ++ expect (config.systemd.sockets == { }) "a socket unit exists although enable = false"
      ++ expect (
        !(config.environment.etc ? "sni-edge/config.json")
      ) "/etc/sni-edge/config.json exists although enable = false"
      ++ ports [ ] config
      ++ expect (config.services.k3s.manifests == { }) "a k3s manifest exists although k3sTrust is off";
  };

  allow-list = {
    modules = [ ../../nixos/examples/allow-list.nix ];
    checks =
      config:
      gatewayChecks config
      ++ expect (
        lib.hasPrefix "${builtins.storeDir}/" (
          toString (lib.head config.services.sniEdge.settings.routes).names_file
        )
        || builtins.isPath (lib.head config.services.sniEdge.settings.routes).names_file
      ) "names_file is not a Nix path";
  };

  kube-suffix = {
    modules = [ kubeSuffix ];
    checks =
      config:
      gatewayChecks config
      ++ expect (
        builtins.length config.services.sniEdge.settings.backends.kube.servers == 3
      ) "kube does not have three servers";
  };

  # With a build machine that can run the package, the config file is the
  # output of the build-time check, whose script runs `sni-edge check` on the
  # generated JSON.
  build-time-check = {
    modules = [ ../../nixos/examples/allow-list.nix ];
    canExecute = true;
    runCheck = false;
    checks =
      config:
      let
        script = builtins.readFile config.services.sniEdge.configFile;
      in
      expect (
        builtins.match ".*${sniEdge} check --config ${builtins.storeDir}/[a-z0-9]+-sni-edge[.]json\n.*" script
        != null
      ) "the build-time check does not run `sni-edge check` on the generated file: ${script}"
      ++ serviceChecks config;
  };

  # A names_file outside the store is fine once the build-time check is off.
  names-file-outside-store = {
    modules = [
      kubeSuffix
      {
        services.sniEdge.checkConfig = false;
        services.sniEdge.settings.routes = lib.mkForce outsideStore;
      }
    ];
    canExecute = true;
    runCheck = false;
    checks =
      config:
      expect (
        (builtins.fromJSON (builtins.readFile config.services.sniEdge.configFile)).routes == outsideStore
      ) "with checkConfig = false the config file is not the generated JSON";
  };

  # Unset options are absent from the file; freeform keys pass through.
  nulls-dropped = {
    modules = [
      kubeSuffix
      {
        services.sniEdge.openFirewall = lib.mkForce false;
        services.sniEdge.settings.default_backend = lib.mkForce null;
        services.sniEdge.settings.http.redirect_status = 301;
      }
    ];
    checks =
      config:
      let
        json = builtins.fromJSON (builtins.readFile config.services.sniEdge.configFile);
      in
      expect (
        json.routes == [
          {
            name = "kube";
            names = [ "*.kube.example.com" ];
            backend = "kube";
            acme_backend = "kube-acme";
          }
        ]
      ) "routes are ${show json.routes}"
      ++ expect (
        json.backends.local-https == {
          servers = [ "127.0.0.1:8443" ];
          proxy_protocol = "v2";
        }
      ) "backends.local-https is ${show json.backends.local-https}"
      ++ expect (
        lib.head json.backends.kube.servers == {
          address = "192.0.2.21:443";
          max_connections = 128;
        }
      ) "backends.kube.servers is ${show json.backends.kube.servers}"
      ++ expect (
        json.timeouts == { } && json.limits == { } && json.log == { }
      ) "unset groups are not empty objects"
      ++ expect (!(json ? default_backend) && !(json ? metrics)) "null keys are in the file"
      ++ expect (json.http == { redirect_status = 301; }) "freeform http is ${show (json.http or null)}"
      ++ expect (builtins.length json.listeners == 4) "default listeners are ${show json.listeners}"
      ++ ports [ ] config;
  };

  # The lab's listeners are on one address, IPv4 only: the socket follows
  # them (checked in socketChecks).
  lab = {
    modules = [ ./lab.nix ];
    lab = true;
    checks = gatewayChecks;
  };

  # Socket activation off: the gateway binds its listeners itself, and a
  # change of listeners is a reload like any other.
  socket-activation-off = {
    modules = [
      kubeSuffix
      { services.sniEdge.socketActivation = false; }
    ];
    checks = gatewayChecks;
  };

  # Socket activation with the default listeners: IPv4 and IPv6 on the same
  # ports, which is what BindIPv6Only = "ipv6-only" is for.
  socket-activation-dual-stack = {
    modules = [ ../../nixos/examples/allow-list.nix ];
    checks =
      config:
      serviceChecks config
      ++ expect (
        config.systemd.sockets.sni-edge.listenStreams == [
          "0.0.0.0:443"
          "[::]:443"
          "0.0.0.0:80"
          "[::]:80"
        ]
      ) "listenStreams are ${show config.systemd.sockets.sni-edge.listenStreams}";
  };

  # Health checks and the metrics endpoint: typed options, written to the
  # file as the gateway reads them (and `sni-edge check` accepts the file).
  health-and-metrics =
    let
      kubeCheck = {
        kind = "tls";
        interval = "10s";
        timeout = "3s";
        rise = 1;
        fall = 2;
        server_name = "health.kube.example.com";
      };
    in
    {
      modules = [
        kubeSuffix
        {
          services.sniEdge.settings = {
            metrics.address = "127.0.0.1:9113";
            backends.kube.health_check = kubeCheck;
            # All defaults.
            backends.kube-acme.health_check = { };
          };
        }
      ];
      checks =
        config:
        let
          json = builtins.fromJSON (builtins.readFile config.services.sniEdge.configFile);
        in
        gatewayChecks config
        ++ expect (
          json.metrics == { address = "127.0.0.1:9113"; }
        ) "metrics is ${show (json.metrics or null)}"
        ++
          expect (json.backends.kube.health_check == kubeCheck)
            "backends.kube.health_check is ${show (json.backends.kube.health_check or null)}"
        ++
          expect (json.backends.kube-acme.health_check == { })
            "backends.kube-acme.health_check is ${show (json.backends.kube-acme.health_check or null)}"
        ++ expect (!(json.backends.local-https ? health_check)) "an unset health_check is in the file";
    };

  # The k3s node example: k3sTrust writes the manifest and starts no gateway.
  k3s-example = {
    modules = [ k3sNode ];
    runCheck = false;
    manifest = "sni-edge-traefik-proxy-protocol";
    checks =
      config:
      let
        m = config.services.k3s.manifests.sni-edge-traefik-proxy-protocol;
      in
      expect (m.target == "sni-edge-traefik-proxy-protocol.yaml") "manifest target is ${m.target}"
      ++ expect (!(config.systemd.services ? sni-edge)) "k3sTrust alone starts a gateway"
      ++ ports [
        80
        443
      ] config;
  };

  # Bare addresses become /32 and /128, CIDRs stay; the manifest can be renamed.
  k3s-trust = {
    modules = [
      k3sNode
      {
        services.sniEdge.k3sTrust = {
          gatewayAddresses = lib.mkForce [
            "192.0.2.1"
            "2001:db8::1"
            "198.51.100.0/24"
          ];
          manifestName = "gateway-trust";
        };
      }
    ];
    runCheck = false;
    checks =
      config:
      let
        inherit (config.services.k3s) manifests;
        values = builtins.fromJSON manifests.gateway-trust.content.spec.valuesContent;
        want = [
          "192.0.2.1/32"
          "2001:db8::1/128"
          "198.51.100.0/24"
        ];
      in
      expect (
        builtins.attrNames manifests == [ "gateway-trust" ]
      ) "manifests are ${show (builtins.attrNames manifests)}"
      ++ expect (
        manifests.gateway-trust.target == "gateway-trust.yaml"
      ) "manifest target is ${manifests.gateway-trust.target}"
      ++ expect (values.ports.web.proxyProtocol.trustedIPs == want) "web trusts ${show values.ports.web}"
      ++ expect (
        values.ports.websecure.proxyProtocol.trustedIPs == want
      ) "websecure trusts ${show values.ports.websecure}";
  };

  # One case per assertion, each violating it and nothing else.
  assert-listeners-empty = fails "listeners must not be empty" kubeSuffix {
    services.sniEdge.settings.listeners = [ ];
  };
  assert-firewall-port =
    fails "openFirewall needs every listener address to end in `:port`" kubeSuffix
      {
        services.sniEdge.openFirewall = true;
        services.sniEdge.settings.listeners = [
          {
            address = "gateway.test";
            protocol = "tls";
          }
        ];
      };
  assert-default-backend = fails "default_backend = \"nowhere\" is not one of" kubeSuffix {
    services.sniEdge.settings.default_backend = lib.mkForce "nowhere";
  };
  assert-names-file-outside-store =
    fails "checkConfig needs every names_file in the Nix store" kubeSuffix
      {
        services.sniEdge.settings.routes = lib.mkForce outsideStore;
      };
  assert-route-backend = fails "routes.0.backend = \"nowhere\" is not one of" kubeSuffix {
    services.sniEdge.settings.routes = lib.mkForce [
      {
        names = [ "app.example.test" ];
        backend = "nowhere";
      }
    ];
  };
  assert-route-acme-backend =
    fails "routes.0 (app).acme_backend = \"nowhere\" is not one of" kubeSuffix
      {
        services.sniEdge.settings.routes = lib.mkForce [
          {
            name = "app";
            names = [ "app.example.test" ];
            backend = "kube";
            acme_backend = "nowhere";
          }
        ];
      };
  assert-route-no-names = fails "routes.0 has neither names nor names_file" kubeSuffix {
    services.sniEdge.settings.routes = lib.mkForce [ { backend = "kube"; } ];
  };
  assert-backend-servers = fails "backends.kube-acme.servers must not be empty" kubeSuffix {
    services.sniEdge.settings.backends.kube-acme.servers = lib.mkForce [ ];
  };
  assert-k3s-addresses = fails "gatewayAddresses must not be empty" k3sNode {
    services.sniEdge.k3sTrust.gatewayAddresses = lib.mkForce [ ];
  };
  assert-k3s-wildcard = fails "must not contain 0.0.0.0/0 or ::/0" k3sNode {
    services.sniEdge.k3sTrust.gatewayAddresses = lib.mkForce [ "0.0.0.0/0" ];
  };
  assert-k3s-role = fails "needs services.k3s.role = \"server\"" k3sNode {
    services.k3s.role = lib.mkForce "agent";
  };
  assert-k3s-traefik-disabled = fails "services.k3s.disable contains \"traefik\"" k3sNode {
    services.k3s.disable = [ "traefik" ];
  };

  warn-acme-without-http = {
    modules = [
      kubeSuffix
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
