# The cluster side of a gateway setup: a k3s server whose bundled Traefik trusts the
# PROXY header of the gateway at 192.0.2.1, and only that.
{
  services.k3s = {
    enable = true;
    role = "server";
  };
  services.sniEdge.k3sTrust = {
    enable = true;
    gatewayAddresses = [ "192.0.2.1" ];
  };
  networking.firewall.allowedTCPPorts = [
    80
    443
  ];
}
