# NixOS module for the sni-edge agent: services.sniEdgeAgent.
#
# Tunnel mode's home side: the agent dials out to one or more gateways, keeps
# an authenticated, encrypted session to each, and connects each stream the
# gateway opens to one of its own `targets` (the local ingress). It listens on
# nothing and needs no capability. `settings` is the agent's JSON config
# (keys as in the file), checked by `sni-edge check` when the system is built.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.sniEdgeAgent;
  settingsFormat = pkgs.formats.json { };
  inherit (lib) literalMD mkOption types;
  inherit (import ./lib/options.nix { inherit lib settingsFormat; })
    durationOption
    logOption
    metricsOption
    configFileOption
    ;

  # A fixed path: the unit stays the same when only the config changes.
  configPath = "/etc/sni-edge-agent/config.json";
  # Where systemd puts the key (LoadCredential=key:...) for the service.
  keyCredential = "/run/credentials/sni-edge-agent.service/key";

  validatedFile = import ./lib/config-file.nix { inherit pkgs lib; } {
    name = "sni-edge-agent";
    inherit (cfg) package settings;
    check = cfg.checkConfig;
    keyPath = ".key_file";
  };

  group =
    description: options:
    mkOption {
      default = { };
      inherit description;
      type = types.submodule {
        freeformType = settingsFormat.type;
        inherit options;
      };
    };
in
{
  options.services.sniEdgeAgent = {
    enable = lib.mkEnableOption "the sni-edge agent, which dials out to sni-edge gateways (tunnel mode) and connects their streams to a local ingress";

    package = lib.mkPackageOption pkgs "sni-edge" { };

    keyFile = mkOption {
      type = types.nullOr (
        types.pathWith {
          inStore = false;
          absolute = true;
        }
      );
      default = null;
      example = "/var/lib/secrets/sni-edge-agent/agent.key";
      description = ''
        The agent's private key (made with `sni-edge keygen --out FILE`; its
        public key goes into the gateway's
        {option}`services.sniEdge.settings.tunnel.agents`), a file outside
        the Nix store readable by root. systemd passes it to the service as a
        credential (`LoadCredential=key:...`), so the service's dynamic user
        never reads the file itself.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      example = false;
      description = ''
        Whether to run `sni-edge check` on the generated config while the
        system is built (with a throwaway key in place of the credential), so
        that a bad config fails `nixos-rebuild`.
      '';
    };

    configFile = configFileOption {
      default = validatedFile;
      prefix = "services.sniEdgeAgent";
      path = configPath;
    };

    settings = mkOption {
      description = ''
        The agent's config file as Nix; keys are exactly the keys of its JSON
        file. Keys not declared here pass through and are checked by
        `sni-edge check` at build time.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          key_file = mkOption {
            type = types.str;
            default = keyCredential;
            description = ''
              The private key as the service sees it: the credential that
              {option}`services.sniEdgeAgent.keyFile` is loaded as. Leave it.
            '';
          };
          gateways = mkOption {
            type = types.listOf (
              types.submodule {
                freeformType = settingsFormat.type;
                options = {
                  address = mkOption {
                    type = types.str;
                    example = "gateway.example.com:7443";
                    description = "`host:port` of the gateway's `tunnel` listener.";
                  };
                  public_key = mkOption {
                    type = types.str;
                    example = "sni-edge-key:0J9lZ8Dw1bNkCEoS0t7sUHuUyTAhBSGyyStDA_KcsXk";
                    description = ''
                      The gateway's public key (`sni-edge pubkey --key` on its
                      key file). The agent talks only to a gateway that proves
                      it holds the matching private key.
                    '';
                  };
                };
              }
            );
            default = [ ];
            example = [
              {
                address = "gateway.example.com:7443";
                public_key = "sni-edge-key:0J9lZ8Dw1bNkCEoS0t7sUHuUyTAhBSGyyStDA_KcsXk";
              }
            ];
            description = "Gateways to keep a session with, all at once.";
          };
          targets = mkOption {
            type = types.attrsOf types.str;
            default = { };
            example = {
              https = "127.0.0.1:443";
              http = "127.0.0.1:80";
            };
            description = ''
              Name -> `host:port` (DNS names resolved at connect time) of the
              local ingress. A gateway backend's `target` names one of them;
              the agent connects nowhere else.
            '';
          };
          timeouts = group "Timeouts, as humantime strings (`250ms`, `5s`, `15m`)." {
            connect = durationOption "5s" "Time to connect to a gateway or a target.";
            handshake = durationOption "5s" "Time the session handshake with a gateway may take.";
            idle = durationOption "15m" "A relayed stream silent in both directions this long is closed.";
          };
          reconnect = group "Reconnecting to a gateway after a loss, with jittered backoff." {
            min_delay = durationOption "250ms" "First delay before reconnecting.";
            max_delay = durationOption "30s" "Longest delay between two attempts.";
          };
          log = logOption;
          metrics = metricsOption {
            example = "127.0.0.1:9114";
            what = "sessions to the gateways, streams, bytes, reconnects";
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.keyFile != null;
        message = "services.sniEdgeAgent.keyFile must be set: the agent's private key, from `sni-edge keygen`.";
      }
      {
        assertion = cfg.settings.gateways != [ ];
        message = "services.sniEdgeAgent.settings.gateways must not be empty: the agent would dial nowhere.";
      }
      {
        assertion = cfg.settings.targets != { };
        message = "services.sniEdgeAgent.settings.targets must not be empty: the agent would have nowhere to connect the gateway's streams.";
      }
    ];

    environment.etc."sni-edge-agent/config.json".source = validatedFile;

    systemd.services.sni-edge-agent = {
      description = "sni-edge agent (tunnel mode, dials out to the gateways)";
      documentation = [ "https://github.com/sni-edge/sni-edge" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # The agent has no reload: a new config restarts it, and it
      # reconnects at once (its streams end; the gateway sends new
      # connections to the other agents of the group meanwhile).
      restartTriggers = [ validatedFile ];

      # Hardening (nixos/lib/hardening.nix) with no capability at all: the
      # agent only dials out (and PrivateUsers comes with that).
      serviceConfig = import ./lib/hardening.nix { capabilities = [ ]; } // {
        # READY=1 once its config is loaded and it starts dialing, STOPPING=1 on SIGTERM.
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} agent --config ${configPath}";
        # Read by systemd as root and handed to the dynamic user under
        # $CREDENTIALS_DIRECTORY; the key never enters the Nix store.
        LoadCredential = "key:${toString cfg.keyFile}";
        Restart = "always";
        RestartSec = "2s";
      };
    };
  };
}
