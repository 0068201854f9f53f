# The whole path from the internet to a k3s service: a client on the public network (vlan 1), the
# sni-edge gateway, and a k3s server (vlan 2) with its bundled Traefik and
# ServiceLB, configured by services.sniEdge.k3sTrust. A small echo service
# (traefik/whoami, deployed by manifest) reports the request as Traefik passes
# it on; it must carry the client's own address. Images come from the k3s
# package's airgap images and a local image, pulled never.
{ pkgs, lib, ... }:

let
  common = import ./lib/common.nix { inherit pkgs lib; };
  inherit (common)
    gatewayPublic
    gatewayHome
    clientAddress
    address
    ;
  # The k3s server is the gateway's backend.
  nodeAddress = common.backendAddress;

  certs = common.certs [ "app.example.test" ];

in
{
  name = "sni-edge-k3s";

  nodes = {
    inherit (common) client;
    gateway = common.gateway [ "app.example.test" ];

    node =
      { config, pkgs, ... }:
      {
        imports = [ (address "eth1" nodeAddress) ];
        virtualisation.vlans = [ 2 ];
        # As nixpkgs' own k3s tests (nixos/tests/rancher/default.nix).
        virtualisation = {
          memorySize = 2048;
          diskSize = 4096;
          cores = 2;
        };
        environment.systemPackages = [ pkgs.kubectl ];
        environment.sessionVariables.KUBECONFIG = "/etc/rancher/k3s/k3s.yaml";
        networking.firewall.enable = false;

        services.k3s = {
          enable = true;
          role = "server";
          nodeIP = nodeAddress;
          # Traefik and ServiceLB stay on: they are what this test is about.
          disable = [
            "coredns"
            "local-storage"
            "metrics-server"
          ];
          # The test driver's default route is on eth0; the cluster lives on eth1.
          extraFlags = [ "--flannel-iface eth1" ];
          images = [
            config.services.k3s.package.airgap-images
            common.whoami.image
          ];
          manifests.whoami.content = common.whoami.manifests;
        };

        services.sniEdge.k3sTrust = {
          enable = true;
          gatewayAddresses = [ gatewayHome ];
        };
      };
  };

  testScript = ''
    https = (
        "curl --fail --silent --show-error --max-time 10"
        " --resolve app.example.test:443:${gatewayPublic} --cacert ${certs}/ca.pem"
        " https://app.example.test/"
    )
    acme = (
        "curl --fail --silent --show-error --max-time 10"
        " --resolve app.example.test:80:${gatewayPublic}"
        " http://app.example.test/.well-known/acme-challenge/token-k3s"
    )

    start_all()
    gateway.wait_for_unit("sni-edge.service")
    node.wait_for_unit("k3s.service")
    node.wait_until_succeeds("kubectl get node node", timeout=300)
    node.succeed("kubectl wait --timeout=300s --for=condition=Ready node/node")

    with subtest("Traefik is installed with the values of services.sniEdge.k3sTrust"):
        node.wait_until_succeeds("kubectl -n kube-system rollout status deployment traefik", timeout=600)
        node.wait_until_succeeds(
            "kubectl -n kube-system get deployment traefik -o json"
            " | grep -F 'websecure.proxyProtocol.trustedIPs=${gatewayHome}/32'",
            timeout=120,
        )
        node.succeed(
            "kubectl -n kube-system get deployment traefik -o json"
            " | grep -F 'web.proxyProtocol.trustedIPs=${gatewayHome}/32'"
        )
        policy = node.succeed("kubectl -n kube-system get service traefik -o jsonpath='{.spec.externalTrafficPolicy}'")
        t.assertEqual(policy.strip(), "Local")

    with subtest("the echo service is up behind Traefik"):
        node.succeed(
            "kubectl create secret tls app-tls"
            " --cert=${certs}/server.pem --key=${certs}/server.key"
        )
        node.wait_until_succeeds("kubectl rollout status deployment whoami", timeout=300)

    with subtest("the client reaches the service by name through the gateway and is seen as itself"):
        client.wait_until_succeeds(https, timeout=300)
        # whoami prints the request's headers one per line, as Traefik sent them.
        lines = client.succeed(https).splitlines()
        t.assertIn("X-Real-Ip: ${clientAddress}", lines)
        t.assertIn("X-Forwarded-For: ${clientAddress}", lines)

    with subtest("ACME http-01 on port 80 reaches the service with the client's address too"):
        lines = client.succeed(acme).splitlines()
        t.assertIn("GET /.well-known/acme-challenge/token-k3s HTTP/1.1", lines)
        t.assertIn("X-Real-Ip: ${clientAddress}", lines)

    with subtest("other names get nothing"):
        client.fail(
            "curl --fail --silent --max-time 10 --insecure"
            " --resolve evil.example.test:443:${gatewayPublic} https://evil.example.test/"
        )
  '';
}
