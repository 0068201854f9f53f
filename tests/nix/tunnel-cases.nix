# Tunnel mode's cases of tests/nix/eval.nix (fields as in cases.nix): the
# gateway's tunnel listener, agent groups and key credential; the agent
# module; the k3s trust for the agents; one case per new assertion. The two
# generated configs (gateway and agent) are also written to
# tests/nix/generated/ by check.sh (`export`), so that `sni-edge check` can be
# run on them by hand; `keyPath` says where their key_file is, which check.sh
# points at a throwaway key before it runs `sni-edge check`.
{ lib }:

let
  expect = cond: problem: lib.optional (!cond) problem;
  show = v: builtins.toJSON v;

  # Real Ed25519 public keys (any 32 bytes would do for X25519), made for
  # these tests only; nobody holds their private keys.
  gatewayKey = "sni-edge-key:tD7dsK9KJv9D5nfUg4uQFn1VeRSLD7-cXIiCvLgtppk";
  agentKeys = [
    "sni-edge-key:gUEj93T6EWw-WpQo_ImeyMXgGm0FqwG7b412tyzSfTE"
    "sni-edge-key:uz9leLH2wl-gD5FnWkAh2pNzjzAsil6AGWf-HS8HzC4"
  ];
  otherKey = "sni-edge-key:VEdDIdj3td0Sv0qsmNL9FQfjD6Tl0MydhuFlzEe9dsA";

  tunnelKeyFile = "/var/lib/secrets/sni-edge/tunnel.key";
  agentKeyFile = "/var/lib/secrets/sni-edge-agent/agent.key";

  # The gateway of the tunnel interface's example: agents of group "home" dial
  # in on 7443; app.example.com goes through them to the agents' https
  # target, its ACME challenges to their http target.
  gateway = {
    services.sniEdge = {
      enable = true;
      openFirewall = true;
      inherit tunnelKeyFile;
      settings = {
        listeners = [
          {
            address = "0.0.0.0:443";
            protocol = "tls";
          }
          {
            address = "0.0.0.0:80";
            protocol = "http";
          }
          {
            address = "0.0.0.0:7443";
            protocol = "tunnel";
          }
        ];
        tunnel = {
          agents.home = agentKeys;
          handshake_timeout = "5s";
          keepalive_interval = "1s";
          keepalive_timeout = "4s";
        };
        routes = [
          {
            names = [ "app.example.com" ];
            backend = "home";
            acme_backend = "home-http";
          }
        ];
        backends = {
          home = {
            agents = "home";
            target = "https";
            proxy_protocol = "v2";
          };
          home-http = {
            agents = "home";
            target = "http";
            proxy_protocol = "v2";
          };
        };
      };
    };
  };

  # The agent of the contract's example, on a NixOS machine at home whose
  # ingress listens on 127.0.0.1.
  agent = {
    services.sniEdgeAgent = {
      enable = true;
      keyFile = agentKeyFile;
      settings = {
        gateways = [
          {
            address = "gateway.example.com:7443";
            public_key = gatewayKey;
          }
        ];
        targets = {
          https = "127.0.0.1:443";
          http = "127.0.0.1:80";
        };
        reconnect = {
          min_delay = "250ms";
          max_delay = "30s";
        };
        metrics.address = "127.0.0.1:9114";
      };
    };
  };

  readJSON = file: builtins.fromJSON (builtins.readFile file);

  fails = message: change: {
    modules = [
      gateway
      change
    ];
    failed = [ message ];
  };
in
{
  tunnel-gateway = {
    modules = [ gateway ];
    export = "tunnel-gateway";
    checks =
      config:
      let
        svc = config.systemd.services.sni-edge.serviceConfig;
        json = readJSON config.services.sniEdge.configFile;
      in
      expect
        (
          config.networking.firewall.allowedTCPPorts == [
            80
            443
            7443
          ]
        )
        "openFirewall opens ${show config.networking.firewall.allowedTCPPorts}, want 80, 443 and the tunnel's 7443"
      ++
        expect (svc.LoadCredential == "tunnel-key:${tunnelKeyFile}")
          "LoadCredential is ${show (svc.LoadCredential or null)}"
      ++ expect (
        json.tunnel.key_file == "/run/credentials/sni-edge.service/tunnel-key"
      ) "tunnel.key_file is ${show json.tunnel.key_file}"
      ++ expect (
        json.tunnel.agents == { home = agentKeys; }
      ) "tunnel.agents is ${show json.tunnel.agents}"
      ++ expect (
        json.backends.home == {
          agents = "home";
          target = "https";
          proxy_protocol = "v2";
        }
      ) "backends.home is ${show json.backends.home} (servers must be absent)"
      ++ expect (
        !lib.hasInfix tunnelKeyFile (builtins.toJSON json)
      ) "the key file's own path is in the config (it must be the credential's)"
      ++ expect (lib.elem "0.0.0.0:7443" config.systemd.sockets.sni-edge.listenStreams) "socket activation does not hold the tunnel listener";
  };

  tunnel-agent = {
    modules = [ agent ];
    export = "tunnel-agent";
    keyPath = "key_file";
    configOf = config: config.services.sniEdgeAgent.configFile;
    checks =
      config:
      let
        unit = config.systemd.services.sni-edge-agent;
        svc = unit.serviceConfig;
        json = readJSON config.services.sniEdgeAgent.configFile;
      in
      expect (svc.Type == "notify") "Type is ${show svc.Type}"
      ++ expect (
        svc.ExecStart == "/stub/sni-edge/bin/sni-edge agent --config /etc/sni-edge-agent/config.json"
      ) "ExecStart is ${show svc.ExecStart}"
      ++ expect (
        svc.LoadCredential == "key:${agentKeyFile}"
      ) "LoadCredential is ${show svc.LoadCredential}"
      ++ expect (
        svc.CapabilityBoundingSet == [ "" ]
      ) "CapabilityBoundingSet is ${show svc.CapabilityBoundingSet}, want none"
      ++ expect (svc.AmbientCapabilities == [ ]) "AmbientCapabilities is ${show svc.AmbientCapabilities}"
      ++ expect (svc.PrivateUsers or false) "PrivateUsers is not set"
      ++ expect (
        svc.DynamicUser && svc.NoNewPrivileges && svc.ProtectSystem == "strict"
      ) "not hardened like the gateway"
      ++ expect (
        config.environment.etc."sni-edge-agent/config.json".source
        == config.services.sniEdgeAgent.configFile
      ) "/etc/sni-edge-agent/config.json is not the generated file"
      ++ expect (
        unit.restartTriggers == [ config.services.sniEdgeAgent.configFile ]
      ) "a config change does not restart the agent"
      ++ expect (
        json == {
          key_file = "/run/credentials/sni-edge-agent.service/key";
          gateways = [
            {
              address = "gateway.example.com:7443";
              public_key = gatewayKey;
            }
          ];
          targets = {
            https = "127.0.0.1:443";
            http = "127.0.0.1:80";
          };
          reconnect = {
            min_delay = "250ms";
            max_delay = "30s";
          };
          metrics.address = "127.0.0.1:9114";
          timeouts = { };
          log = { };
        }
      ) "the agent's config is ${show json}"
      ++ expect (config.networking.firewall.allowedTCPPorts == [ ]) "the agent opens ports";
  };

  # With a build machine that runs the package, the build-time check makes a
  # throwaway key, points the config at it, and checks that copy.
  tunnel-build-time-check = {
    modules = [
      gateway
      agent
    ];
    canExecute = true;
    runCheck = false;
    checks =
      config:
      let
        scriptOf = file: builtins.readFile file;
        gw = scriptOf config.services.sniEdge.configFile;
        ag = scriptOf config.services.sniEdgeAgent.configFile;
        shape =
          path:
          "/stub/sni-edge/bin/sni-edge keygen --out \"[$]TMPDIR/throwaway-key\" >/dev/null\n"
          + "/stub/jq/bin/jq --arg key \"[$]TMPDIR/throwaway-key\" '${path} = [$]key' ${builtins.storeDir}/[a-z0-9]+-sni-edge(-agent)?[.]json >\"[$]TMPDIR/config.json\"\n"
          + "/stub/sni-edge/bin/sni-edge check --config \"[$]TMPDIR/config.json\"\n.*";
      in
      expect (
        builtins.match (shape "[.]tunnel[.]key_file") gw != null
      ) "the gateway's build-time check is ${gw}"
      ++ expect (builtins.match (shape "[.]key_file") ag != null) "the agent's build-time check is ${ag}";
  };

  # A key in the Nix store would be readable by every user of the machine.
  tunnel-key-in-store-refused = {
    modules = [ ];
    runCheck = false;
    checks =
      _:
      let
        evalWith =
          keyFile:
          builtins.tryEval (
            (lib.evalModules {
              modules = [
                (import ./nixos-stubs.nix { inherit lib; }).module
                ../../nixos/agent.nix
                { _module.args.pkgs = (import ./nixos-stubs.nix { inherit lib; }).pkgs { }; }
                agent
                { services.sniEdgeAgent.keyFile = lib.mkForce keyFile; }
              ];
            }).config.systemd.services.sni-edge-agent.serviceConfig.LoadCredential
          );
      in
      expect (
        !(evalWith "${builtins.storeDir}/00000000000000000000000000000000-agent.key").success
      ) "a key file in the Nix store is accepted"
      ++ expect (evalWith agentKeyFile).success "a key file outside the store is refused";
  };

  assert-tunnel-needs-key = fails "tunnel mode (a listener with protocol" {
    services.sniEdge.tunnelKeyFile = lib.mkForce null;
  };
  assert-tunnel-key-unused = {
    modules = [
      ../../nixos/examples/allow-list.nix
      { services.sniEdge.tunnelKeyFile = tunnelKeyFile; }
    ];
    failed = [ "tunnelKeyFile is set, but no listener" ];
  };
  assert-tunnel-section-needs-key = {
    modules = [
      ../../nixos/examples/allow-list.nix
      { services.sniEdge.settings.tunnel.agents.home = agentKeys; }
    ];
    failed = [ "or settings.tunnel) needs services.sniEdge.tunnelKeyFile" ];
  };
  assert-agents-unknown-group = fails "backends.home.agents = \"office\" is not one of" {
    services.sniEdge.settings.backends.home.agents = lib.mkForce "office";
  };
  assert-agents-and-servers = fails "backends.home has agents, so it needs target and no servers" {
    services.sniEdge.settings.backends.home.servers = [ "192.0.2.20:443" ];
  };
  assert-agents-need-target = fails "backends.home has agents, so it needs target and no servers" {
    services.sniEdge.settings.backends.home.target = lib.mkForce null;
  };
  assert-agent-key-in-two-groups = fails "the key ${otherKey} is in several groups (home, office)" {
    services.sniEdge.settings.tunnel.agents = {
      home = [ otherKey ];
      office = [ otherKey ];
    };
  };
  assert-agent-gateways-empty = {
    modules = [
      agent
      { services.sniEdgeAgent.settings.gateways = lib.mkForce [ ]; }
    ];
    failed = [ "services.sniEdgeAgent.settings.gateways must not be empty" ];
  };
  assert-agent-key-file = {
    modules = [
      agent
      { services.sniEdgeAgent.keyFile = lib.mkForce null; }
    ];
    failed = [ "services.sniEdgeAgent.keyFile must be set" ];
  };
  assert-agent-targets-empty = {
    modules = [
      agent
      { services.sniEdgeAgent.settings.targets = lib.mkForce { }; }
    ];
    failed = [ "services.sniEdgeAgent.settings.targets must not be empty" ];
  };

  # Tunnel mode on the k3s side: the agents' pod network is trusted, alone
  # or next to a gateway's address (one HelmChartConfig for both).
  k3s-tunnel-trust = {
    manifest = "sni-edge-traefik-proxy-protocol";
    manifestTunnel = true;
    modules = [
      {
        services.k3s.enable = true;
        services.sniEdge.k3sTunnelTrust.enable = true;
      }
    ];
    runCheck = false;
    checks =
      config:
      let
        values = builtins.fromJSON config.services.k3s.manifests.sni-edge-traefik-proxy-protocol.content.spec.valuesContent;
      in
      expect (
        values.ports.websecure.proxyProtocol.trustedIPs == [ "10.42.0.0/16" ]
      ) "websecure trusts ${show values.ports.websecure.proxyProtocol.trustedIPs}"
      ++ expect (
        values.ports.web.proxyProtocol.trustedIPs == [ "10.42.0.0/16" ]
      ) "web trusts ${show values.ports.web.proxyProtocol.trustedIPs}"
      ++
        expect (values.service == { type = "ClusterIP"; })
          "service is ${show values.service}: in tunnel mode alone Traefik must not be reachable from outside the cluster";
  };
  k3s-direct-and-tunnel-trust = {
    modules = [
      ../../nixos/examples/k3s-node.nix
      { services.sniEdge.k3sTunnelTrust.enable = true; }
    ];
    runCheck = false;
    checks =
      config:
      let
        values = builtins.fromJSON config.services.k3s.manifests.sni-edge-traefik-proxy-protocol.content.spec.valuesContent;
      in
      expect (
        values.ports.websecure.proxyProtocol.trustedIPs == [
          "192.0.2.1/32"
          "10.42.0.0/16"
        ]
      ) "websecure trusts ${show values.ports.websecure.proxyProtocol.trustedIPs}"
      ++ expect (
        values.service == { spec.externalTrafficPolicy = "Local"; }
      ) "service is ${show values.service}: the gateway's connections need Local"
      ++ expect (
        lib.attrNames config.services.k3s.manifests == [ "sni-edge-traefik-proxy-protocol" ]
      ) "more than one manifest for Traefik: ${show (lib.attrNames config.services.k3s.manifests)}";
    warnings = [ "k3sTrust and k3sTunnelTrust together" ];
  };
  assert-k3s-tunnel-wildcard = {
    modules = [
      {
        services.k3s.enable = true;
        services.sniEdge.k3sTunnelTrust = {
          enable = true;
          agentAddresses = [ "0.0.0.0/0" ];
        };
      }
    ];
    failed = [ "must not contain 0.0.0.0/0 or ::/0" ];
  };
}
