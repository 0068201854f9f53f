# Every name under *.kube.example.com goes to three Kubernetes nodes,
# at most 128 connections each; their ACME http-01 challenges go to the nodes
# too; all other names go on to a local TLS-terminating proxy, which learns the
# client's address from a PROXY v2 header.
{
  services.sniEdge = {
    enable = true;
    openFirewall = true;
    settings = {
      routes = [
        {
          name = "kube";
          names = [ "*.kube.example.com" ];
          backend = "kube";
          acme_backend = "kube-acme";
        }
      ];
      default_backend = "local-https";
      backends =
        let
          nodes = [
            "192.0.2.21"
            "192.0.2.22"
            "192.0.2.23"
          ];
        in
        {
          kube.servers = map (ip: {
            address = "${ip}:443";
            max_connections = 128;
          }) nodes;
          kube-acme.servers = map (ip: "${ip}:80") nodes;
          local-https = {
            servers = [ "127.0.0.1:8443" ];
            proxy_protocol = "v2";
          };
        };
    };
  };
}
