# The lab's gateway (tests/lab/run.sh) as NixOS config: it must generate the
# same config as examples/lab.json. Gateway 203.0.113.1 on the public side;
# the cluster node 192.0.2.20 runs nginx on 443 (PROXY v1 and v2) and 80
# (ACME), HAProxy on 8443; 192.0.2.21 is the failover server.
let
  node = "192.0.2.20";
  tls = {
    servers = [ "${node}:443" ];
    connect_timeout = "2s";
  };
  haproxy = {
    servers = [ "${node}:8443" ];
    connect_timeout = "2s";
  };
in
{
  services.sniEdge = {
    enable = true;
    openFirewall = true;
    settings = {
      log = {
        level = "info";
        format = "text";
      };
      listeners = [
        {
          address = "203.0.113.1:443";
          protocol = "tls";
        }
        {
          address = "203.0.113.1:80";
          protocol = "http";
        }
      ];
      routes = [
        {
          name = "app";
          names = [ "app.example.test" ];
          backend = "nginx-v2";
          acme_backend = "acme-v2";
        }
        {
          name = "kube";
          names = [ "*.kube.example.test" ];
          backend = "haproxy-v1";
          acme_backend = "acme-v1";
        }
        {
          name = "nginx-v1";
          names = [ "v1.example.test" ];
          backend = "nginx-v1";
        }
        {
          name = "haproxy-v2";
          names = [ "v2.example.test" ];
          backend = "haproxy-v2";
        }
        {
          name = "failover";
          names = [ "failover.example.test" ];
          backend = "failover";
        }
      ];
      backends = {
        nginx-v2 = tls // {
          proxy_protocol = "v2";
        };
        nginx-v1 = tls // {
          proxy_protocol = "v1";
        };
        haproxy-v1 = haproxy // {
          proxy_protocol = "v1";
        };
        haproxy-v2 = haproxy // {
          proxy_protocol = "v2";
        };
        failover = {
          servers = [
            "192.0.2.21:443"
            "${node}:443"
          ];
          proxy_protocol = "v2";
          balance = "round_robin";
          connect_timeout = "2s";
        };
        acme-v2 = {
          servers = [ "${node}:80" ];
          proxy_protocol = "v2";
        };
        acme-v1 = {
          servers = [ "${node}:80" ];
          proxy_protocol = "v1";
        };
      };
      timeouts = {
        client_hello = "5s";
        idle = "5m";
        http_request = "5s";
        shutdown = "5s";
      };
      http = {
        redirect_status = 308;
        max_request_bytes = 8192;
      };
    };
  };
}
