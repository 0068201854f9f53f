# The whole path from the internet to a k3s service: a client on the public network (vlan 1), the
# sni-edge gateway, and a k3s server (vlan 2) with its bundled Traefik and
# ServiceLB, configured by services.sniEdge.k3sTrust. A small echo service
# (traefik/whoami, deployed by manifest) reports the request as Traefik passes
# it on; it must carry the client's own address. Images come from the k3s
# package's airgap images and a local image, pulled never.
{ pkgs, lib, ... }:

let
  common = import ./lib/common.nix { inherit pkgs lib; };
  inherit (common) gatewayHome;

  certs = common.certs [ "app.example.test" ];

in
{
  name = "sni-edge-k3s";

  nodes = {
    inherit (common) client;
    gateway = common.gateway [ "app.example.test" ];

    # The k3s server is the gateway's backend (common.backendAddress).
    node =
      { config, ... }:
      {
        imports = [ common.k3sNode ];
        networking.firewall.enable = false;

        services.k3s = {
          # Traefik and ServiceLB stay on: they are what this test is about.
          disable = [
            "coredns"
            "local-storage"
            "metrics-server"
          ];
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

    ${common.whoamiSubtests {
      inherit certs;
      token = "token-k3s";
    }}
  '';
}
