# NixOS module for a k3s server node behind an sni-edge gateway:
# services.sniEdge.k3sTrust (the gateway connects to the cluster) and
# services.sniEdge.k3sTunnelTrust (tunnel mode: agents in the cluster connect
# to Traefik). Both go into one manifest, since k3s reads one
# HelmChartConfig named traefik.
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
  tunnel = config.services.sniEdge.k3sTunnelTrust;
  enabled = cfg.enable || tunnel.enable;

  # Traefik's trustedIPs takes CIDRs; a bare address means that one host.
  toCidr =
    address:
    if lib.hasInfix "/" address then
      address
    else if lib.hasInfix ":" address then
      "${address}/128"
    else
      "${address}/32";
  trustedIPs = map toCidr (
    lib.optionals cfg.enable cfg.gatewayAddresses ++ lib.optionals tunnel.enable tunnel.agentAddresses
  );

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

  options.services.sniEdge.k3sTunnelTrust = {
    enable = lib.mkEnableOption ''
      tunnel mode's trust on a k3s server node: k3s' bundled Traefik reads
      the PROXY header from the sni-edge agents that run in the cluster (or
      on its nodes) on its `web` and `websecure` entry points. Goes into the
      same HelmChartConfig as {option}`services.sniEdge.k3sTrust.enable` when both
      are on
    '';

    agentAddresses = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ "10.42.0.0/16" ];
      example = [ "10.244.0.0/16" ];
      description = ''
        Addresses the agents' connections reach Traefik from. An agent pod
        connects to the Traefik Service's cluster IP; kube-proxy rewrites
        only the destination, so Traefik sees the agent pod's own address,
        which is in the cluster's pod network (k3s' default
        `--cluster-cidr`, 10.42.0.0/16; set this if yours differs). An agent
        running on a node as a NixOS service is seen from that node's
        address on the pod network (its `cni0` or `flannel.1` address, also
        in the pod network), because kube-proxy masquerades traffic to a
        Service that does not come from a pod. Every pod can then claim any
        client address, so run nothing you do not trust in the cluster, or
        restrict who may reach Traefik with a NetworkPolicy. Alone (without
        {option}`services.sniEdge.k3sTrust.enable`) it also makes Traefik's
        Service a ClusterIP, so nothing outside the cluster reaches it.
      '';
    };
  };

  config = lib.mkIf enabled {
    assertions = [
      {
        assertion = cfg.enable -> cfg.gatewayAddresses != [ ];
        message = "services.sniEdge.k3sTrust.gatewayAddresses must not be empty.";
      }
      {
        assertion = tunnel.enable -> tunnel.agentAddresses != [ ];
        message = "services.sniEdge.k3sTunnelTrust.agentAddresses must not be empty.";
      }
      {
        assertion = lib.all (c: !(lib.elem c wildcards)) trustedIPs;
        message = "services.sniEdge.k3sTrust.gatewayAddresses and services.sniEdge.k3sTunnelTrust.agentAddresses must not contain 0.0.0.0/0 or ::/0: that lets any client claim any address.";
      }
      {
        assertion = config.services.k3s.enable -> config.services.k3s.role == "server";
        message = "services.sniEdge.k3sTrust or k3sTunnelTrust needs services.k3s.role = \"server\": k3s only deploys manifests on server nodes.";
      }
      {
        assertion = config.services.k3s.enable -> !(lib.elem "traefik" config.services.k3s.disable);
        message = "services.sniEdge.k3sTrust and k3sTunnelTrust configure k3s' bundled Traefik, but services.k3s.disable contains \"traefik\".";
      }
    ];

    warnings =
      lib.optional (cfg.enable && tunnel.enable)
        "services.sniEdge.k3sTrust and k3sTunnelTrust together: Traefik stays a LoadBalancer Service for the gateway, and ServiceLB's svclb pods, which forward outside connections to it, have addresses in the trusted pod network; anyone who reaches this node's ports 80 and 443 may then claim any client address. Keep those ports closed to all but the gateway (k3s/README.md).";

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
        # With a gateway that connects to the node: a LoadBalancer Service
        # (ServiceLB) that keeps the gateway's address (k3s/README.md). In
        # tunnel mode alone nothing outside the cluster needs to reach
        # Traefik, and the trusted pod network must be all that can: a
        # ClusterIP Service, which ServiceLB does not expose.
        service = if cfg.enable then { spec.externalTrafficPolicy = "Local"; } else { type = "ClusterIP"; };
        ports = {
          web.proxyProtocol.trustedIPs = trustedIPs;
          websecure.proxyProtocol.trustedIPs = trustedIPs;
        };
      };
    };
  };
}
