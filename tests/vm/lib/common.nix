# What the VM tests share: a client on the public network (vlan 1), the
# sni-edge gateway on both networks, and a backend on the home network (vlan 2)
# at backendAddress; a CA and a server certificate; the client node and the
# gateway node. Not a test itself: flake.nix makes a check only of the regular
# .nix files directly in tests/vm/, not of those in its subdirectories.
#
#   common = import ./lib/common.nix { inherit pkgs lib; };
{ pkgs, lib }:

rec {
  gatewayPublic = "198.51.100.1";
  gatewayHome = "192.0.2.1";
  clientAddress = "198.51.100.10";
  backendAddress = "192.0.2.20";

  # A CA (ca.pem) and a server certificate (server.pem, server.key) for the
  # given names, made at build time: nothing from outside.
  certs =
    names:
    pkgs.runCommand "sni-edge-test-certs" { nativeBuildInputs = [ pkgs.openssl ]; } ''
      mkdir $out && cd $out
      openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=sni-edge test CA" -keyout ca.key -out ca.pem \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=${lib.head names}" -keyout server.key -out server.csr
      printf '%s\n' "subjectAltName=${lib.concatMapStringsSep "," (name: "DNS:${name}") names}" \
        "extendedKeyUsage=serverAuth" > server.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.pem
      openssl verify -CAfile ca.pem server.pem
    '';

  address = interface: ip: {
    networking.interfaces.${interface}.ipv4.addresses = lib.mkForce [
      {
        address = ip;
        prefixLength = 24;
      }
    ];
  };

  # The gateway's one route: TLS for these names to the backend's port 443,
  # their ACME http-01 challenges to its port 80.
  route = names: {
    name = "cluster";
    inherit names;
    backend = "cluster-https";
    acme_backend = "cluster-http";
  };

  client = {
    imports = [ (address "eth1" clientAddress) ];
    virtualisation.vlans = [ 1 ];
  };

  # The gateway, allowing these names: PROXY v2 on 443, v1 on 80, so that both
  # versions are read on the other side.
  gateway = names: {
    imports = [
      (address "eth1" gatewayPublic)
      (address "eth2" gatewayHome)
    ];
    virtualisation.vlans = [
      1
      2
    ];

    services.sniEdge = {
      enable = true;
      openFirewall = true;
      settings = {
        routes = [ (route names) ];
        backends = {
          cluster-https = {
            servers = [ "${backendAddress}:443" ];
            proxy_protocol = "v2";
          };
          cluster-http = {
            servers = [ "${backendAddress}:80" ];
            proxy_protocol = "v1";
          };
        };
      };
    };
  };

  # traefik/whoami, an echo service that prints the request as Traefik passed
  # it on (its headers, one per line), behind a TLS Ingress for
  # app.example.test (Secret app-tls, made by the test), as manifests for
  # services.k3s.manifests; its image is loaded from the store, never pulled.
  whoami = rec {
    image = pkgs.dockerTools.buildImage {
      name = "test.local/whoami";
      tag = "local";
      copyToRoot = [ pkgs.whoami ];
      config.Entrypoint = [ "/bin/whoami" ];
    };
    labels."app.kubernetes.io/name" = "whoami";
    manifests = [
      {
        apiVersion = "apps/v1";
        kind = "Deployment";
        metadata.name = "whoami";
        spec = {
          selector.matchLabels = labels;
          template = {
            metadata = { inherit labels; };
            spec.containers = [
              {
                name = "whoami";
                image = "${image.imageName}:${image.imageTag}";
                imagePullPolicy = "Never";
                ports = [ { containerPort = 80; } ];
              }
            ];
          };
        };
      }
      {
        apiVersion = "v1";
        kind = "Service";
        metadata.name = "whoami";
        spec = {
          selector = labels;
          ports = [
            {
              port = 80;
              targetPort = 80;
            }
          ];
        };
      }
      {
        apiVersion = "networking.k8s.io/v1";
        kind = "Ingress";
        metadata.name = "whoami";
        spec = {
          ingressClassName = "traefik";
          tls = [
            {
              hosts = [ "app.example.test" ];
              secretName = "app-tls";
            }
          ];
          rules = [
            {
              host = "app.example.test";
              http.paths = [
                {
                  path = "/";
                  pathType = "Prefix";
                  backend.service = {
                    name = "whoami";
                    port.number = 80;
                  };
                }
              ];
            }
          ];
        };
      }
    ];
  };

  # A k3s server on the home network (vlan 2) at backendAddress, as nixpkgs'
  # own k3s tests size it (nixos/tests/rancher/default.nix), with kubectl.
  k3sNode =
    { pkgs, ... }:
    {
      imports = [ (address "eth1" backendAddress) ];
      virtualisation.vlans = [ 2 ];
      virtualisation = {
        memorySize = 2048;
        diskSize = 4096;
        cores = 2;
      };
      environment.systemPackages = [ pkgs.kubectl ];
      environment.sessionVariables.KUBECONFIG = "/etc/rancher/k3s/k3s.yaml";
      services.k3s = {
        enable = true;
        role = "server";
        nodeIP = backendAddress;
        # The test driver's default route is on eth0; the cluster lives on eth1.
        extraFlags = [ "--flannel-iface eth1" ];
      };
    };

  # What a user of the whoami service behind the gateway observes, as test
  # script: the page by name with their own address (X-Real-Ip, set by
  # Traefik from the PROXY header), ACME http-01 on port 80 likewise, and
  # nothing for another name. `token` names the ACME request of this test.
  whoamiSubtests =
    { certs, token }:
    ''
      https = (
          "curl --fail --silent --show-error --max-time 10"
          " --resolve app.example.test:443:${gatewayPublic} --cacert ${certs}/ca.pem"
          " https://app.example.test/"
      )
      acme = (
          "curl --fail --silent --show-error --max-time 10"
          " --resolve app.example.test:80:${gatewayPublic}"
          " http://app.example.test/.well-known/acme-challenge/${token}"
      )

      with subtest("the client reaches the service by name through the gateway and is seen as itself"):
          client.wait_until_succeeds(https, timeout=300)
          # whoami prints the request's headers one per line, as Traefik sent them.
          lines = client.succeed(https).splitlines()
          t.assertIn("X-Real-Ip: ${clientAddress}", lines)
          t.assertIn("X-Forwarded-For: ${clientAddress}", lines)

      with subtest("ACME http-01 on port 80 reaches the service with the client's address too"):
          lines = client.succeed(acme).splitlines()
          t.assertIn("GET /.well-known/acme-challenge/${token} HTTP/1.1", lines)
          t.assertIn("X-Real-Ip: ${clientAddress}", lines)

      with subtest("other names get nothing"):
          client.fail(
              "curl --fail --silent --max-time 10 --insecure"
              " --resolve evil.example.test:443:${gatewayPublic} https://evil.example.test/"
          )
    '';
}
