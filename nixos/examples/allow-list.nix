# An allow list in front of a home k3s cluster: TLS for the names listed in
# allowed-domains.txt passes through to the cluster, every other name is
# refused, and port 80 redirects to https (the job often done by HAProxy on a
# VPS).
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
