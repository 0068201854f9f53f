# Seed 000: HAProxy on a VPS passes TLS for an allow list of names through to a
# home k3s cluster, refuses every other name and redirects port 80 to https.
# The whole setup with sni-edge:
{
  services.sniEdge = {
    enable = true;
    openFirewall = true; # 443 and 80; the default listeners, IPv4 and IPv6
    settings = {
      routes = [
        {
          names_file = ./allowed-domains.txt;
          backend = "home";
        }
      ];
      backends.home.servers = [ "192.0.2.20:443" ];
    };
  };
}
