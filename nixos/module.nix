# NixOS module for the sni-edge gateway: services.sniEdge.
#
# `settings` is RFC 42 style: its keys are exactly the keys of the JSON config
# file (snake_case), so the generated JSON *is* the config file. The parts
# everyone sets are declared and documented; anything else passes through the
# freeform type and is checked by `sni-edge check` when the system is built.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.sniEdge;
  settingsFormat = pkgs.formats.json { };

  inherit (lib)
    literalExpression
    literalMD
    mkOption
    types
    ;
  inherit (import ./lib/options.nix { inherit lib settingsFormat; })
    enumOption
    strOption
    durationOption
    countOption
    logOption
    metricsOption
    configFileOption
    ;

  # Where the service reads its config. A fixed path in /etc (not the store
  # path) keeps the unit file unchanged when only the config changes, so that
  # a config change is a reload (reloadTriggers) and a package change a restart.
  configPath = "/etc/sni-edge/config.json";

  # The generated JSON, checked by `sni-edge check` at build time.
  validatedFile = import ./lib/config-file.nix { inherit pkgs lib; } {
    name = "sni-edge";
    inherit (cfg) package settings;
    check = cfg.checkConfig;
    keyPath = if cfg.tunnelKeyFile != null then ".tunnel.key_file" else null;
  };

  # Where systemd puts the tunnel key (LoadCredential=tunnel-key:...) for the
  # service: $CREDENTIALS_DIRECTORY/tunnel-key.
  tunnelKeyCredential = "/run/credentials/sni-edge.service/tunnel-key";
  usesTunnel =
    lib.any (l: l.protocol == "tunnel") cfg.settings.listeners
    || lib.any (b: b.agents != null) (lib.attrValues cfg.settings.backends);
  agentGroups = if cfg.settings.tunnel == null then { } else cfg.settings.tunnel.agents;
  # Every agent key with the groups that list it.
  keyGroups = lib.foldlAttrs (
    acc: group: keys:
    lib.foldl' (acc': key: acc' // { ${key} = (acc'.${key} or [ ]) ++ [ group ]; }) acc keys
  ) { } agentGroups;

  # Listener addresses are "IP:port" or "[IPv6]:port".
  portOf =
    address:
    let
      m = builtins.match ".*:([0-9]+)" address;
    in
    if m == null then null else lib.toInt (builtins.head m);
  listenerPorts = lib.unique (
    lib.filter (p: p != null) (map (l: portOf l.address) cfg.settings.listeners)
  );

  # What systemd's ListenStream= takes is what a listener's address is:
  # "0.0.0.0:443", "[::]:443". The gateway finds each passed socket's
  # listener by comparing addresses, so these must stay equal.
  listenStreams = lib.unique (map (l: l.address) cfg.settings.listeners);

  namesFiles = lib.filter (f: f != null) (map (r: r.names_file) cfg.settings.routes);
  inStore = f: builtins.isPath f || lib.hasPrefix "${builtins.storeDir}/" (toString f);

  listenerType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      address = mkOption {
        type = types.str;
        example = "[::]:443";
        description = ''
          Socket address to listen on: `IP:port`, IPv6 as `[::]:443`.
        '';
      };
      protocol = mkOption {
        type = types.enum [
          "tls"
          "http"
          "tunnel"
        ];
        example = "http";
        description = ''
          `tls`: read the SNI of the ClientHello and pass the TLS stream through
          to the route's backend. `http`: redirect to `https://` and forward
          ACME http-01 challenges to the route's `acme_backend`. `tunnel`:
          where the agents of tunnel mode dial in (see
          {option}`services.sniEdge.settings.tunnel`); like every listener it
          is opened by {option}`services.sniEdge.openFirewall`.
        '';
      };
      proxy_protocol_from = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        defaultText = literalMD "unset: no client may send a PROXY header";
        example = [ "10.0.0.0/8" ];
        description = ''
          CIDRs whose connections must start with a PROXY v1/v2 header, for a
          load balancer in front of the gateway.
        '';
      };
    };
  };

  routeType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      name = strOption "the backend's name" "cluster" "Label for this route in logs and metrics.";
      names = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        defaultText = literalMD "unset: only {option}`services.sniEdge.settings.routes.*.names_file` is used";
        example = [
          "blog.example.com"
          "*.kube.example.com"
        ];
        description = ''
          Host names this route accepts: exact names, or `*.suffix` for any
          name below the suffix (at any depth, never the suffix itself).
          Case-insensitive; a trailing dot is ignored.
        '';
      };
      names_file = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = literalExpression "./allowed-domains.txt";
        description = ''
          File with one name or `*.suffix` pattern per line (`#` comments and
          blank lines allowed), read at start and on every reload.

          A Nix path (`./allowed-domains.txt`) is copied to the store and
          checked at build time. A path outside the store (for a list you edit
          by hand, then `systemctl reload sni-edge`) cannot be read by the
          build-time check: set {option}`services.sniEdge.checkConfig` to
          `false` for it. It must not be under /home (ProtectHome).
        '';
      };
      backend = mkOption {
        type = types.str;
        example = "cluster-https";
        description = ''
          Name of the backend in {option}`services.sniEdge.settings.backends`
          that receives the raw TLS stream of the matching connections.
        '';
      };
      acme_backend = strOption "unset: ACME challenges for these names are answered 421" "cluster-http" ''
        Backend for `/.well-known/acme-challenge/` requests to these names on
        the `http` listeners, so the cluster can answer ACME http-01.
      '';
    };
  };

  serverType = types.either types.str (
    types.submodule {
      freeformType = settingsFormat.type;
      options = {
        address = mkOption {
          type = types.str;
          example = "node2.test:443";
          description = "`host:port` of the server; DNS names are resolved at connect time.";
        };
        max_connections = mkOption {
          type = types.nullOr types.ints.positive;
          default = null;
          example = 128;
          description = "Connections to this server open at once.";
        };
      };
    }
  );

  healthCheckType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      kind = enumOption [ "tcp" "tls" ] "tcp" "tls" ''
        `tcp`: the connect must succeed. `tls`: the server must also answer
        a ClientHello with a TLS record (a handshake or an alert: it speaks
        TLS). Probes start with the backend's PROXY header in its LOCAL
        form, so an ingress that requires the header accepts them.
      '';
      interval = durationOption "5s" "Time between two probes of one server.";
      timeout = durationOption "2s" "Time one probe may take.";
      rise = countOption 2 "Successful probes in a row that bring a down server back.";
      fall = countOption 3 "Failed probes in a row that take an up server out of rotation.";
      server_name =
        strOption "unset: `tls` probes send no SNI" "health.kube.example.com"
          "Host name sent as SNI by `tls` probes.";
    };
  };

  backendType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      servers = mkOption {
        type = types.nullOr (types.listOf serverType);
        default = null;
        defaultText = literalMD "unset: the backend is a group of tunnel agents (`agents`)";
        example = [
          "192.0.2.20:443"
          {
            address = "192.0.2.21:443";
            max_connections = 128;
          }
        ];
        description = ''
          Servers of this backend: `"host:port"` strings or objects with
          `address` and `max_connections`. A backend has either `servers` or
          `agents`.
        '';
      };
      agents = strOption "unset: the backend has `servers`" "home" ''
        Tunnel mode: the connected agents of this group of
        {option}`services.sniEdge.settings.tunnel.agents` are the servers of
        this backend; a connection goes to a live agent of the group, and is
        refused at once when none is connected. Needs `target`.
      '';
      target = strOption "unset (needed with `agents`)" "https" ''
        Tunnel mode: the name of the address in the agents' own `targets`
        that they connect these streams to (the gateway names it, the agent
        decides where it is).
      '';
      proxy_protocol = enumOption [ "none" "v1" "v2" ] "none" "v2" ''
        PROXY protocol header sent before the client's bytes, so the cluster
        sees the client's address. Traefik and nginx read both versions.
      '';
      balance = enumOption [
        "round_robin"
        "source_hash"
      ] "round_robin" "source_hash" "How connections are spread over the servers.";
      connect_timeout = durationOption "5s" "Time allowed to connect to one server (humantime: `250ms`, `5s`).";
      health_check = mkOption {
        type = types.nullOr healthCheckType;
        default = null;
        defaultText = literalMD "unset: servers are not probed and always count as up";
        example = {
          kind = "tls";
          interval = "10s";
          fall = 2;
        };
        description = ''
          Active health checks of every server of this backend. A server that
          fails {option}`services.sniEdge.settings.backends.<name>.health_check.fall`
          probes in a row gets no new connections until it passes
          {option}`services.sniEdge.settings.backends.<name>.health_check.rise`
          in a row; state changes are logged and shown
          in the `sni_edge_backend_server_up` metric. An empty set (`{ }`)
          turns the checks on with their defaults.
        '';
      };
    };
  };

in
{
  options.services.sniEdge = {
    enable = lib.mkEnableOption "sni-edge, the gateway that routes TLS by SNI without decrypting it";

    package = lib.mkPackageOption pkgs "sni-edge" { };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = ''
        Whether to open the TCP ports of all
        {option}`services.sniEdge.settings.listeners` in the firewall.
        The metrics port is never opened.
      '';
    };

    socketActivation = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether systemd opens the listening sockets (a `sni-edge.socket` unit
        with one `ListenStream` per listener) and passes them to the gateway.

        Why: the sockets then outlive the process. While the gateway restarts
        (a new package, a crash and `Restart=on-failure`, `systemctl restart`)
        new connections wait in the kernel's queue and are accepted by the
        new process, instead of being refused. `nixos-rebuild switch` restarts
        only the service, not the socket (the service has
        `stopIfChanged = false`), so a package update keeps the sockets too.

        Changing {option}`services.sniEdge.settings.listeners` is a restart,
        not a reload: the addresses are in the service's `restartTriggers`.
        `nixos-rebuild switch` does not restart a changed socket unit, so
        systemd keeps the sockets of the old addresses that remain, closes
        the others, and the restarted gateway binds the new ones itself
        (which is why the service keeps `CAP_NET_BIND_SERVICE`). Run
        `systemctl restart sni-edge.socket` once afterwards (or reboot) so
        that systemd holds the new addresses as well; that restarts the
        gateway with it.

        Settings other than the listeners are still applied by a reload.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether to run `sni-edge check` on the generated config file while the
        system is built, so that a bad config fails `nixos-rebuild`. The check
        also reads every `names_file`, so it must be turned off when a
        `names_file` lives outside the Nix store.
      '';
    };

    tunnelKeyFile = mkOption {
      type = types.nullOr (
        types.pathWith {
          inStore = false;
          absolute = true;
        }
      );
      default = null;
      example = "/var/lib/secrets/sni-edge/tunnel.key";
      description = ''
        Tunnel mode: the gateway's private key (made with
        `sni-edge keygen --out FILE`), a file outside the Nix store readable
        by root. systemd passes it to the service as a credential
        (`LoadCredential=tunnel-key:...`), so the service's dynamic user never
        reads the file itself; {option}`services.sniEdge.settings.tunnel`
        points at the credential. Setting it turns on tunnel mode's settings.
      '';
    };

    configFile = configFileOption {
      default = validatedFile;
      prefix = "services.sniEdge";
      path = configPath;
    };

    settings = mkOption {
      default = { };
      description = ''
        The sni-edge config file as Nix. Keys are exactly the keys of the JSON
        config (see `examples/gateway.json` in the sni-edge repository); keys
        not declared here are passed through as they are and checked by
        `sni-edge check` at build time.
      '';
      example = literalExpression ''
        {
          routes = [
            {
              names = [ "blog.example.com" "*.kube.example.com" ];
              backend = "cluster-https";
              acme_backend = "cluster-http";
            }
          ];
          backends = {
            cluster-https = { servers = [ "192.0.2.20:443" ]; proxy_protocol = "v2"; };
            cluster-http = { servers = [ "192.0.2.20:80" ]; proxy_protocol = "v1"; };
          };
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          listeners = mkOption {
            type = types.listOf listenerType;
            default = [
              {
                address = "0.0.0.0:443";
                protocol = "tls";
              }
              {
                address = "[::]:443";
                protocol = "tls";
              }
              {
                address = "0.0.0.0:80";
                protocol = "http";
              }
              {
                address = "[::]:80";
                protocol = "http";
              }
            ];
            defaultText = literalMD "TLS on port 443 and HTTP on port 80, IPv4 and IPv6";
            example = [
              {
                address = "198.51.100.1:443";
                protocol = "tls";
              }
              {
                address = "198.51.100.1:80";
                protocol = "http";
              }
            ];
            description = "Sockets the gateway listens on.";
          };

          routes = mkOption {
            type = types.listOf routeType;
            default = [ ];
            example = [
              {
                name = "cluster";
                names = [ "*.kube.example.com" ];
                backend = "cluster-https";
                acme_backend = "cluster-http";
              }
            ];
            description = ''
              Which names go where. The most specific match wins: an exact name
              beats `*.suffix`, a longer suffix beats a shorter one. A name no
              route matches is refused, unless
              {option}`services.sniEdge.settings.default_backend` is set.
            '';
          };

          backends = mkOption {
            type = types.attrsOf backendType;
            default = { };
            example = {
              cluster-https = {
                servers = [ "192.0.2.20:443" ];
                proxy_protocol = "v2";
              };
            };
            description = "Named groups of servers that routes send connections to.";
          };

          default_backend = strOption "unset: names that match no route are refused" "legacy-https" ''
            Backend for well-formed names that match no route. Leave unset to
            refuse them, which is what an allow list wants.
          '';

          tunnel = mkOption {
            default = null;
            defaultText = literalMD "unset: no tunnel mode";
            example = literalExpression ''
              {
                agents.home = [ "sni-edge-key:..." "sni-edge-key:..." ];
              }
            '';
            description = ''
              Tunnel mode: agents at home dial out to a `tunnel` listener, and
              backends with `agents` send their connections through them.
              Required when a `tunnel` listener or an `agents` backend exists.
              Its `key_file` is set to the systemd credential of
              {option}`services.sniEdge.tunnelKeyFile`.
            '';
            type = types.nullOr (
              types.submodule {
                freeformType = settingsFormat.type;
                options = {
                  key_file = mkOption {
                    type = types.str;
                    default = tunnelKeyCredential;
                    description = ''
                      The gateway's private key as the service sees it: the
                      credential that {option}`services.sniEdge.tunnelKeyFile`
                      is loaded as. Leave it.
                    '';
                  };
                  agents = mkOption {
                    type = types.attrsOf (types.listOf types.str);
                    default = { };
                    example = {
                      home = [
                        "sni-edge-key:0J9lZ8Dw1bNkCEoS0t7sUHuUyTAhBSGyyStDA_KcsXk"
                        "sni-edge-key:7wX2fQpJm3kG9LrT0aBcDeFgHiJkLmNoPqRsTuVwXyZ"
                      ];
                    };
                    description = ''
                      Agent groups: name -> the public keys (`sni-edge pubkey`)
                      of the agents allowed to connect as that group. Only
                      these keys are accepted; a key belongs to one group only.
                    '';
                  };
                  handshake_timeout = durationOption "5s" "Time an agent's connection may take to authenticate.";
                  keepalive_interval = durationOption "1s" "Time between keepalives on an agent's session.";
                  keepalive_timeout = durationOption "3s" "An agent that does not answer a keepalive this long is taken as dead.";
                };
              }
            );
          };

          timeouts = mkOption {
            default = { };
            description = "Timeouts, as humantime strings (`250ms`, `5s`, `15m`).";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                client_hello = durationOption "5s" "From accept until the whole ClientHello is in.";
                idle = durationOption "15m" "A relayed connection silent in both directions this long is closed.";
                http_request = durationOption "10s" "Time to read an HTTP request head on an `http` listener.";
                shutdown = durationOption "30s" "On stop, how long open connections may take to finish.";
              };
            };
          };

          limits = mkOption {
            default = { };
            description = "Connection limits.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options = {
                max_connections = countOption 20000 "Connections open at once, all listeners together; unset, 20000 or what the open files limit holds (2 per connection, 192 kept), if less. A value that cannot fit stops the service from starting.";
                max_pending_handshakes = countOption 2000 "Per listener, connections that have not yet sent a complete ClientHello or request head; when full, the oldest of the client holding the most is closed.";
                max_pending_per_client = countOption 64 "Pending connections of one client on one listener.";
                max_connections_per_client = countOption 512 "Connections open at once from one client (an IPv4 address, an IPv6 /64).";
              };
            };
          };

          metrics = metricsOption {
            example = "127.0.0.1:9113";
            what = "connections by route and outcome, bytes, backend servers up, reloads";
          };

          log = logOption;
        };
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      let
        backendNames = lib.attrNames cfg.settings.backends;
        hasBackend = name: lib.elem name backendNames;
        routeLabel =
          i: r:
          "services.sniEdge.settings.routes.${toString i}${
            lib.optionalString (r.name != null) " (${r.name})"
          }";
        forRoutes = f: lib.imap0 f cfg.settings.routes;
      in
      [
        {
          assertion = cfg.settings.listeners != [ ];
          message = "services.sniEdge.settings.listeners must not be empty: the gateway would listen nowhere.";
        }
        {
          assertion = cfg.openFirewall -> lib.all (l: portOf l.address != null) cfg.settings.listeners;
          message = "services.sniEdge.openFirewall needs every listener address to end in `:port`; got ${
            lib.concatMapStringsSep ", " (l: l.address) cfg.settings.listeners
          }.";
        }
        {
          assertion = cfg.settings.default_backend != null -> hasBackend cfg.settings.default_backend;
          message = "services.sniEdge.settings.default_backend = \"${toString cfg.settings.default_backend}\" is not one of services.sniEdge.settings.backends (${lib.concatStringsSep ", " backendNames}).";
        }
        {
          assertion = cfg.checkConfig -> lib.all inStore namesFiles;
          message = "services.sniEdge.checkConfig needs every names_file in the Nix store (a Nix path such as ./allowed-domains.txt); ${
            lib.concatMapStringsSep ", " toString (lib.filter (f: !inStore f) namesFiles)
          } is outside it, so either use a Nix path or set services.sniEdge.checkConfig = false.";
        }
      ]
      ++ forRoutes (
        i: r: {
          assertion = hasBackend r.backend;
          message = "${routeLabel i r}.backend = \"${r.backend}\" is not one of services.sniEdge.settings.backends (${lib.concatStringsSep ", " backendNames}).";
        }
      )
      ++ forRoutes (
        i: r: {
          assertion = r.acme_backend != null -> hasBackend r.acme_backend;
          message = "${routeLabel i r}.acme_backend = \"${toString r.acme_backend}\" is not one of services.sniEdge.settings.backends (${lib.concatStringsSep ", " backendNames}).";
        }
      )
      ++ forRoutes (
        i: r: {
          assertion = (r.names == null || r.names == [ ]) -> r.names_file != null;
          message = "${routeLabel i r} has neither names nor names_file, so it can never match.";
        }
      )
      ++ lib.mapAttrsToList (name: b: {
        assertion = b.agents == null -> b.servers != null && b.servers != [ ];
        message = "services.sniEdge.settings.backends.${name}.servers must not be empty.";
      }) cfg.settings.backends
      ++ lib.mapAttrsToList (name: b: {
        assertion = b.agents != null -> b.servers == null && b.target != null;
        message = "services.sniEdge.settings.backends.${name} has agents, so it needs target and no servers.";
      }) cfg.settings.backends
      ++ lib.mapAttrsToList (name: b: {
        assertion = b.agents != null -> agentGroups ? ${b.agents};
        message = "services.sniEdge.settings.backends.${name}.agents = \"${toString b.agents}\" is not one of services.sniEdge.settings.tunnel.agents (${lib.concatStringsSep ", " (lib.attrNames agentGroups)}).";
      }) cfg.settings.backends
      ++ [
        {
          assertion = (usesTunnel || cfg.settings.tunnel != null) -> cfg.tunnelKeyFile != null;
          message = "services.sniEdge: tunnel mode (a listener with protocol = \"tunnel\", a backend with agents, or settings.tunnel) needs services.sniEdge.tunnelKeyFile, the gateway's private key from `sni-edge keygen`.";
        }
        {
          assertion = cfg.tunnelKeyFile != null -> usesTunnel;
          message = "services.sniEdge.tunnelKeyFile is set, but no listener has protocol = \"tunnel\" and no backend has agents.";
        }
      ]
      ++ lib.mapAttrsToList (key: groups: {
        assertion = lib.length groups == 1;
        message = "services.sniEdge.settings.tunnel.agents: the key ${key} is in several groups (${lib.concatStringsSep ", " groups}); a key belongs to one group.";
      }) keyGroups;

    warnings =
      lib.optional
        (
          lib.any (r: r.acme_backend != null) cfg.settings.routes
          && !lib.any (l: l.protocol == "http") cfg.settings.listeners
        )
        "services.sniEdge: a route has an acme_backend but no listener has protocol = \"http\", so ACME http-01 challenges never reach it.";

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall listenerPorts;

    # Tunnel mode: tunnelKeyFile brings the `tunnel` section (with key_file
    # at the credential), so its other keys are optional.
    services.sniEdge.settings.tunnel = lib.mkIf (cfg.tunnelKeyFile != null) { };

    environment.etc."sni-edge/config.json".source = validatedFile;

    # Socket activation as in harmonia's module: the socket unit is wanted by
    # sockets.target, the service requires it and starts after it. The
    # service is still wanted by multi-user.target, so the gateway (its health
    # checks, its metrics endpoint) runs from boot, not from the first client.
    systemd.sockets.sni-edge = lib.mkIf cfg.socketActivation {
      description = "sni-edge TLS gateway sockets";
      documentation = [ "https://github.com/sni-edge/sni-edge" ];
      wantedBy = [ "sockets.target" ];
      inherit listenStreams;
      socketConfig = {
        # "[::]:443" next to "0.0.0.0:443": without this the IPv6 socket
        # would take IPv4 too and the IPv4 one would fail to bind. The gateway
        # sets IPV6_V6ONLY on the sockets it binds itself, the same way.
        BindIPv6Only = "ipv6-only";
        # The queue that holds new connections while the gateway restarts;
        # the same as the gateway's own listen(4096) (capped by
        # net.core.somaxconn).
        Backlog = 4096;
        # sockets.target comes before the network: a listener on a given
        # address (not 0.0.0.0 or [::]) must bind before that address exists.
        FreeBind = true;
      };
    };

    systemd.services.sni-edge = {
      description = "sni-edge TLS gateway";
      documentation = [ "https://github.com/sni-edge/sni-edge" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      requires = lib.optional cfg.socketActivation "sni-edge.socket";
      after = [ "network-online.target" ] ++ lib.optional cfg.socketActivation "sni-edge.socket";

      # A changed config is reloaded (SIGHUP, connections stay up); a changed
      # package or unit is restarted. Only this trigger differs between two
      # generations whose settings differ.
      reloadTriggers = [ validatedFile ];
      # With socket activation the listeners are also in the socket unit, so
      # changing them is a restart (see the socketActivation option).
      restartTriggers = lib.optionals cfg.socketActivation listenStreams;
      # For a socket-activated service, switch-to-configuration stops the
      # socket with the service and starts only the socket again, unless
      # this is false: then the service alone is restarted and the socket
      # keeps queueing connections meanwhile.
      stopIfChanged = lib.mkIf cfg.socketActivation false;

      # Hardening (nixos/lib/hardening.nix). CAP_NET_BIND_SERVICE is needed
      # without socket activation to bind ports below 1024, and kept with it:
      # systemd passes the sockets its socket unit holds, but a listener added
      # by a later switch is bound by the gateway itself until the socket unit
      # is restarted (see socketActivation).
      serviceConfig = import ./lib/hardening.nix { capabilities = [ "CAP_NET_BIND_SERVICE" ]; } // {
        # The gateway says READY=1 once it listens, RELOADING=1 then READY=1
        # around a reload and STOPPING=1 on SIGTERM.
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} run --config ${configPath}";
        # Check first, like nixpkgs' haproxy module: a config that does not
        # pass is reported by `systemctl reload` and never reaches the gateway
        # (which would also keep its old config, but silently).
        ExecReload = [
          "${lib.getExe cfg.package} check --config ${configPath}"
          "${pkgs.coreutils}/bin/kill -HUP $MAINPID"
        ];
        Restart = "on-failure";
        RestartSec = "2s";
        # Read by systemd as root and handed to the dynamic user under
        # $CREDENTIALS_DIRECTORY; the key never enters the Nix store.
        LoadCredential = lib.mkIf (cfg.tunnelKeyFile != null) "tunnel-key:${toString cfg.tunnelKeyFile}";
      };
    };
  };
}
