# NixOS module for a k3s server node behind an sni-edge gateway:
# services.sniEdge.k3sTrust.
#
# It installs the HelmChartConfig that makes k3s' bundled Traefik read the
# PROXY header the gateway sends, trusting exactly the gateway's addresses,
# and keeps the client's address on its way through ServiceLB and kube-proxy
# (externalTrafficPolicy: Local). k3s/traefik-proxy-protocol.yaml is the same
# manifest as plain YAML; k3s/README.md explains each key.
{
  config,
  lib,
  ...
}:

let
  cfg = config.services.sniEdge.k3sTrust;

  # Traefik's trustedIPs takes CIDRs; a bare address means that one host.
  toCidr =
    address:
    if lib.hasInfix "/" address then
      address
    else if lib.hasInfix ":" address then
      "${address}/128"
    else
      "${address}/32";
  trustedIPs = map toCidr cfg.gatewayAddresses;

  wildcards = [
    "0.0.0.0/0"
    "::/0"
  ];
in
{
  options.services.sniEdge.k3sTrust = {
    enable = lib.mkEnableOption ''
      the HelmChartConfig that makes k3s' bundled Traefik trust the PROXY
      header of the sni-edge gateway on its `web` and `websecure` entry points
    '';

    gatewayAddresses = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      example = [ "192.0.2.1" ];
      description = ''
        Addresses the gateway's connections arrive from, as this node sees
        them (the gateway's address on the home side of the tunnel or link,
        not its public address unless that is what reaches the node). A bare
        address is trusted as a single host (`/32`, `/128`); CIDRs are taken
        as they are. Anyone who can connect from these addresses can claim
        any client address, so list nothing else.
      '';
    };

    manifestName = lib.mkOption {
      type = lib.types.str;
      default = "sni-edge-traefik-proxy-protocol";
      description = ''
        Attribute name in {option}`services.k3s.manifests` (and so the file
        name under the k3s manifests directory) of the generated
        HelmChartConfig.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.gatewayAddresses != [ ];
        message = "services.sniEdge.k3sTrust.gatewayAddresses must not be empty.";
      }
      {
        assertion = lib.all (c: !(lib.elem c wildcards)) trustedIPs;
        message = "services.sniEdge.k3sTrust.gatewayAddresses must not contain 0.0.0.0/0 or ::/0: that lets any client claim any address.";
      }
      {
        assertion = config.services.k3s.enable -> config.services.k3s.role == "server";
        message = "services.sniEdge.k3sTrust needs services.k3s.role = \"server\": k3s only deploys manifests on server nodes.";
      }
      {
        assertion = config.services.k3s.enable -> !(lib.elem "traefik" config.services.k3s.disable);
        message = "services.sniEdge.k3sTrust configures k3s' bundled Traefik, but services.k3s.disable contains \"traefik\".";
      }
    ];

    services.k3s.manifests.${cfg.manifestName}.content = {
      apiVersion = "helm.cattle.io/v1";
      kind = "HelmChartConfig";
      metadata = {
        name = "traefik";
        namespace = "kube-system";
      };
      # valuesContent is a string of YAML; JSON is YAML, as nixpkgs' own
      # rancher multi-node test does for the canal chart.
      spec.valuesContent = builtins.toJSON {
        service.spec.externalTrafficPolicy = "Local";
        ports = {
          web.proxyProtocol.trustedIPs = trustedIPs;
          websecure.proxyProtocol.trustedIPs = trustedIPs;
        };
      };
    };
  };
}
