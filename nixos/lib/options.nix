# Option declarations that the settings of both modules (gateway and agent)
# share: optional values whose unset (null) means the program's default, and
# the `log` and `metrics` groups, which mean the same in both configs.
{ lib, settingsFormat }:

let
  inherit (lib) literalMD mkOption types;
in
rec {
  # An optional choice: unset (null) leaves the program's default.
  enumOption =
    values: default: example: description:
    mkOption {
      type = types.nullOr (types.enum values);
      default = null;
      defaultText = literalMD "unset: `${default}`";
      inherit example description;
    };

  # An optional string; defaultText says what unset (null) means.
  strOption =
    defaultText: example: description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      defaultText = literalMD defaultText;
      inherit example description;
    };

  durationOption = default: strOption "unset: `${default}`" default;

  countOption =
    default: description:
    mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      defaultText = literalMD "unset: `${toString default}`";
      example = default;
      inherit description;
    };

  logOption = mkOption {
    default = { };
    description = "Logging.";
    type = types.submodule {
      freeformType = settingsFormat.type;
      options = {
        level = enumOption [
          "trace"
          "debug"
          "info"
          "warn"
          "error"
        ] "info" "debug" "Log level.";
        format = enumOption [
          "auto"
          "text"
          "journald"
        ] "auto" "text" "Log format; `auto` is journald fields under systemd, else text.";
      };
    };
  };

  # The program binds this address itself; no module opens it in the firewall.
  metricsOption =
    { example, what }:
    mkOption {
      default = null;
      defaultText = literalMD "unset: no metrics endpoint";
      example.address = example;
      description = ''
        Prometheus metrics endpoint: any GET on this address returns the
        metrics in the text format (${what}). Bound by the program itself;
        never opened in the firewall.
      '';
      type = types.nullOr (
        types.submodule {
          freeformType = settingsFormat.type;
          options.address = mkOption {
            type = types.str;
            inherit example;
            description = "Socket address of the metrics endpoint. It is never opened in the firewall.";
          };
        }
      );
    };

  # The module's generated (and checked) config file, for other modules to
  # read; the service reads it at `path`, a fixed path in /etc.
  configFileOption =
    {
      default,
      prefix,
      path,
    }:
    mkOption {
      type = types.path;
      readOnly = true;
      inherit default;
      defaultText = literalMD "the JSON file generated from {option}`${prefix}.settings`";
      description = ''
        The generated (and, with {option}`${prefix}.checkConfig`, checked)
        config file. The service reads it as {file}`${path}`.
      '';
    };
}
