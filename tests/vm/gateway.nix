# The gateway module end to end: a client on the public network (vlan 1), the
# sni-edge gateway on both networks, and a backend on the home network (vlan 2)
# running nginx that reads the PROXY header and believes it only from the
# gateway. Run by the flake as checks.<system>.vm-gateway, with the flake's
# modules on every node.
{ pkgs, lib, ... }:

let
  common = import ./lib/common.nix { inherit pkgs lib; };
  inherit (common)
    gatewayPublic
    gatewayHome
    clientAddress
    backendAddress
    address
    route
    ;

  certs = common.certs [
    "app.example.test"
    "*.kube.example.test"
    "new.example.test"
  ];
in
{
  name = "sni-edge-gateway";

  nodes = {
    inherit (common) client;

    gateway = {
      imports = [
        (common.gateway [
          "app.example.test"
          "*.kube.example.test"
        ])
      ];

      # Switched to in the reload subtest: one more allowed name.
      specialisation.more-names.configuration = {
        services.sniEdge.settings.routes = lib.mkForce [
          (route [
            "app.example.test"
            "*.kube.example.test"
            "new.example.test"
          ])
        ];
      };
    };

    backend = {
      imports = [ (address "eth1" backendAddress) ];
      virtualisation.vlans = [ 2 ];
      networking.firewall.allowedTCPPorts = [
        80
        443
      ];

      services.nginx = {
        enable = true;
        # $remote_addr becomes the address in the PROXY header only for
        # connections from the gateway; $realip_remote_addr is the TCP peer.
        appendHttpConfig = ''
          set_real_ip_from ${gatewayHome};
          real_ip_header proxy_protocol;
        '';
        virtualHosts."app.example.test" = {
          serverAliases = [
            "*.kube.example.test"
            "new.example.test"
          ];
          onlySSL = true;
          sslCertificate = "${certs}/server.pem";
          sslCertificateKey = "${certs}/server.key";
          listen = [
            {
              addr = "0.0.0.0";
              port = 443;
              ssl = true;
              proxyProtocol = true;
            }
          ];
          locations."/".return = ''200 "client=$remote_addr via=$realip_remote_addr sni=$ssl_server_name\n"'';
        };
        virtualHosts.acme = {
          serverName = "_";
          default = true;
          listen = [
            {
              addr = "0.0.0.0";
              port = 80;
              proxyProtocol = true;
            }
          ];
          locations."/.well-known/acme-challenge/".return =
            ''200 "acme $uri client=$remote_addr via=$realip_remote_addr\n"'';
        };
      };
    };
  };

  testScript =
    { nodes, ... }:
    let
      moreNames = "${nodes.gateway.system.build.toplevel}/specialisation/more-names";
    in
    ''
      def https(name, extra=""):
          return (
              "curl --fail --silent --show-error --max-time 10"
              f" --resolve {name}:443:${gatewayPublic} --cacert ${certs}/ca.pem {extra}"
              f" https://{name}/"
          )

      def http(name, path, extra=""):
          return (
              "curl --silent --show-error --max-time 10"
              f" --resolve {name}:80:${gatewayPublic} {extra} 'http://{name}{path}'"
          )

      def main_pid():
          return gateway.succeed("systemctl show --property MainPID --value sni-edge.service").strip()

      def active_state():
          return gateway.succeed("systemctl show --property ActiveState --value sni-edge.service").strip()

      start_all()
      backend.wait_for_unit("nginx.service")
      backend.wait_for_open_port(443)
      backend.wait_for_open_port(80)
      gateway.wait_for_unit("sni-edge.service")
      gateway.wait_for_open_port(443)
      gateway.wait_for_open_port(80)
      client.wait_for_unit("multi-user.target")

      with subtest("systemd holds the listening sockets and the gateway says when it is ready"):
          t.assertEqual(gateway.succeed("systemctl show --property Type --value sni-edge.service").strip(), "notify")
          gateway.succeed("systemctl is-active sni-edge.socket")
          listen = gateway.succeed("systemctl show --property Listen --value sni-edge.socket")
          for address in ["0.0.0.0:443", "[::]:443", "0.0.0.0:80", "[::]:80"]:
              t.assertIn(f"{address} (Stream)", listen)
          # Every listener took its socket from systemd, none was left over.
          gateway.fail("journalctl -u sni-edge.service | grep -q -F 'no listener in the config uses'")

      with subtest("an allowed name reaches the backend, which sees the client's address"):
          out = client.succeed(https("app.example.test"))
          t.assertIn("client=${clientAddress} via=${gatewayHome} sni=app.example.test", out)

      with subtest("names under *.kube.example.test are allowed, at any depth"):
          out = client.succeed(https("x.kube.example.test"))
          t.assertIn("client=${clientAddress} via=${gatewayHome} sni=x.kube.example.test", out)
          # The certificate's wildcard covers one label only, hence --insecure.
          out = client.succeed(https("a.b.kube.example.test", "--insecure"))
          t.assertIn("sni=a.b.kube.example.test", out)

      with subtest("other names, the bare suffix and no SNI at all get nothing"):
          for name in ["evil.example.test", "kube.example.test", "new.example.test", "xkube.example.test"]:
              client.fail(https(name))
          client.fail("curl --fail --silent --max-time 10 --insecure https://${gatewayPublic}/")
          gateway.succeed("journalctl -u sni-edge.service | grep -F evil.example.test")

      with subtest("port 80 redirects allowed names to https and refuses others"):
          out = client.succeed(http("app.example.test", "/path?q=1", "-o /dev/null -w '%{http_code} %{redirect_url}'"))
          t.assertEqual(out.strip(), "308 https://app.example.test/path?q=1")
          out = client.succeed(http("evil.example.test", "/", "-o /dev/null -w '%{http_code}'"))
          t.assertEqual(out.strip(), "421")

      with subtest("ACME http-01 challenges reach the backend, with the client's address"):
          out = client.succeed(http("app.example.test", "/.well-known/acme-challenge/token-42", "--fail"))
          t.assertIn("acme /.well-known/acme-challenge/token-42 client=${clientAddress} via=${gatewayHome}", out)
          out = client.succeed(http("x.kube.example.test", "/.well-known/acme-challenge/token-43", "--fail"))
          t.assertIn("client=${clientAddress}", out)
          client.fail(http("evil.example.test", "/.well-known/acme-challenge/token-44", "--fail"))

      with subtest("the backend believes a PROXY header only from the gateway"):
          # A forged PROXY header from a host that is not the gateway.
          out = backend.succeed(
              "curl --fail --silent --show-error --max-time 10"
              " --haproxy-protocol --haproxy-clientip 203.0.113.7"
              " http://127.0.0.1/.well-known/acme-challenge/forged"
          )
          t.assertIn("client=127.0.0.1", out)
          t.assertNotIn("203.0.113.7", out)

      with subtest("a config change reloads the gateway, it is not restarted"):
          pid = main_pid()
          client.fail(https("new.example.test"))
          gateway.succeed("${moreNames}/bin/switch-to-configuration test >&2")
          client.wait_until_succeeds(https("new.example.test"), timeout=60)
          out = client.succeed(https("new.example.test"))
          t.assertIn("client=${clientAddress} via=${gatewayHome} sni=new.example.test", out)
          t.assertEqual(main_pid(), pid)
          gateway.succeed("journalctl -u sni-edge.service | grep -q -i reloaded")
          gateway.fail("journalctl -u sni-edge.service | grep -q -i stopped")
          client.succeed(https("app.example.test"))

      # After the reload subtest, which checks that the gateway never stopped.
      with subtest("restart queues connections"):
          pid = main_pid()
          # A connection that never sends its request: the stopping gateway
          # waits for it (up to timeouts.http_request, 10s) before it exits,
          # so the restart lasts that long.
          client.succeed("bash -c 'exec 3<>/dev/tcp/${gatewayPublic}/80; sleep 60' >/dev/null 2>&1 &")
          gateway.wait_until_succeeds(
              "ss --no-header --tcp state established '( sport = :80 )' | grep -q -F '${clientAddress}'",
              timeout=30,
          )
          gateway.succeed("systemctl restart --no-block sni-edge.service")
          gateway.wait_until_succeeds(
              'test "$(systemctl show --property ActiveState --value sni-edge.service)" != active',
              timeout=10,
          )
          # One attempt, no retries, made while the old process is stopping and
          # no longer accepting: the connection waits in the socket's queue
          # until the new process takes it.
          out = client.succeed(https("app.example.test", "--max-time 60"))
          t.assertIn("client=${clientAddress} via=${gatewayHome} sni=app.example.test", out)
          gateway.wait_for_unit("sni-edge.service")
          new_pid = main_pid()
          t.assertNotEqual(new_pid, pid)
          gateway.succeed(f"journalctl _PID={new_pid} | grep -q -F app.example.test")

      with subtest("a connection starts a stopped gateway"):
          gateway.succeed("systemctl stop sni-edge.service")
          t.assertIn(active_state(), ["inactive", "failed"])
          gateway.succeed("systemctl is-active sni-edge.socket")
          out = client.succeed(https("app.example.test", "--max-time 60"))
          t.assertIn("sni=app.example.test", out)
          t.assertEqual(active_state(), "active")
    '';
}
