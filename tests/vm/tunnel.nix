# Tunnel mode end to end: a client on the public network (vlan 1), the
# sni-edge gateway, and a k3s server at home (vlan 2) whose firewall drops
# every inbound connection. Two sni-edge agents run in the cluster as the
# Deployment of k3s/tunnel-agent.yaml, dial out to the gateway's tunnel
# listener, and connect its streams to Traefik (k3s/traefik-tunnel-trust.yaml,
# written by services.sniEdge.k3sTunnelTrust). The client reaches the echo
# service by name through the gateway and must be seen with its own address;
# with one agent pod deleted, the other carries on. Run by the flake as
# checks.<system>.vm-tunnel, with the flake's modules on every node.
{ pkgs, lib, ... }:

let
  common = import ./lib/common.nix { inherit pkgs lib; };
  inherit (common)
    gatewayPublic
    gatewayHome
    clientAddress
    address
    ;
  nodeAddress = common.backendAddress;
  tunnelPort = 7443;

  certs = common.certs [ "app.example.test" ];

  # Keys for this test only, made at build time with the package's own
  # keygen; the gateway's config needs the agent's public key and the
  # agent's the gateway's, so they are read back at evaluation time
  # (import from derivation, which `nix flake check` allows).
  keysOf =
    sni-edge:
    pkgs.runCommand "sni-edge-tunnel-test-keys" { } ''
      mkdir $out
      ${lib.getExe sni-edge} keygen --out $out/gateway.key >$out/gateway.pub
      ${lib.getExe sni-edge} keygen --out $out/agent.key >$out/agent.pub
    '';
  publicKey = keys: name: lib.removeSuffix "\n" (builtins.readFile "${keys}/${name}.pub");

  # Private keys live outside the store on a real machine; here systemd's
  # tmpfiles copies the test key to where tunnelKeyFile says, before the
  # service starts.
  gatewayKeyFile = "/var/lib/sni-edge-test/gateway.key";

  # The agent's image: the package and nothing else, loaded from the store.
  imageOf =
    sni-edge:
    pkgs.dockerTools.buildImage {
      name = "test.local/sni-edge";
      tag = "local";
      copyToRoot = [ sni-edge ];
      config.Entrypoint = [ "/bin/sni-edge" ];
    };

  # k3s/tunnel-agent.yaml as a user edits it: the gateway's address and key,
  # the image.
  agentManifest =
    { image, gatewayKey }:
    pkgs.writeText "tunnel-agent.yaml" (
      lib.replaceStrings
        [
          "gateway.example.com:7443"
          "sni-edge-key:tD7dsK9KJv9D5nfUg4uQFn1VeRSLD7-cXIiCvLgtppk"
          "image: sni-edge:0.1.0"
          "imagePullPolicy: IfNotPresent"
        ]
        [
          "${gatewayHome}:${toString tunnelPort}"
          gatewayKey
          "image: ${image.imageName}:${image.imageTag}"
          "imagePullPolicy: Never"
        ]
        (builtins.readFile ../../k3s/tunnel-agent.yaml)
    );

  route = {
    name = "home";
    names = [ "app.example.test" ];
    backend = "home";
    acme_backend = "home-http";
  };
in
{
  name = "sni-edge-tunnel";

  nodes = {
    inherit (common) client;

    gateway =
      { config, ... }:
      let
        keys = keysOf config.services.sniEdge.package;
      in
      {
        imports = [
          (address "eth1" gatewayPublic)
          (address "eth2" gatewayHome)
        ];
        virtualisation.vlans = [
          1
          2
        ];

        systemd.tmpfiles.rules = [
          "d ${dirOf gatewayKeyFile} 0700 root root -"
          "C ${gatewayKeyFile} 0600 root root - ${keys}/gateway.key"
        ];

        services.sniEdge = {
          enable = true;
          openFirewall = true;
          tunnelKeyFile = gatewayKeyFile;
          settings = {
            listeners = [
              {
                address = "0.0.0.0:443";
                protocol = "tls";
              }
              {
                address = "0.0.0.0:80";
                protocol = "http";
              }
              {
                address = "0.0.0.0:${toString tunnelPort}";
                protocol = "tunnel";
              }
            ];
            tunnel.agents.home = [ (publicKey keys "agent") ];
            routes = [ route ];
            backends = {
              home = {
                agents = "home";
                target = "https";
                proxy_protocol = "v2";
              };
              home-http = {
                agents = "home";
                target = "http";
                proxy_protocol = "v2";
              };
            };
          };
        };
      };

    node =
      { config, pkgs, ... }:
      let
        keys = keysOf config.services.sniEdge.package;
        image = imageOf config.services.sniEdge.package;
      in
      {
        imports = [ common.k3sNode ];

        # Home: nothing comes in. The firewall is on with no open port (k3s'
        # API and kubelet included); only the pod bridge is trusted, so that
        # pods reach the API server and each other on this node.
        networking.firewall = {
          enable = true;
          allowedTCPPorts = lib.mkForce [ ];
          trustedInterfaces = [ "cni0" ];
        };

        services.k3s = {
          # Traefik and CoreDNS stay on: the agents reach Traefik's Service
          # by name. ServiceLB is off: nothing outside the cluster reaches
          # Traefik (its Service is a ClusterIP, see k3sTunnelTrust).
          disable = [
            "servicelb"
            "local-storage"
            "metrics-server"
          ];
          images = [
            config.services.k3s.package.airgap-images
            common.whoami.image
            image
          ];
          manifests = {
            whoami.content = common.whoami.manifests;
            sni-edge-agent.source = agentManifest {
              inherit image;
              gatewayKey = publicKey keys "gateway";
            };
          };
        };

        services.sniEdge.k3sTunnelTrust.enable = true;

        # For the test script: the agent's key, made into a Secret there.
        environment.etc."sni-edge-test/agent.key".source = "${keys}/agent.key";
      };
  };

  testScript = ''
    def connects(port):
        return f"timeout 5 bash -c 'exec 3<>/dev/tcp/${nodeAddress}/{port}'"

    start_all()
    gateway.wait_for_unit("sni-edge.service")
    gateway.wait_for_open_port(${toString tunnelPort})
    node.wait_for_unit("k3s.service")
    node.wait_until_succeeds("kubectl get node node", timeout=300)
    node.succeed("kubectl wait --timeout=300s --for=condition=Ready node/node")

    with subtest("the home node takes no connection from outside"):
        node.wait_until_succeeds("ss --no-header --tcp --listening '( sport = :6443 )' | grep -q 6443", timeout=120)
        for port in [6443, 10250, 443, 80]:
            gateway.fail(connects(port))

    with subtest("Traefik trusts the pod network and is a ClusterIP Service"):
        node.wait_until_succeeds("kubectl -n kube-system rollout status deployment traefik", timeout=600)
        node.wait_until_succeeds(
            "kubectl -n kube-system get deployment traefik -o json"
            " | grep -F 'websecure.proxyProtocol.trustedIPs=10.42.0.0/16'",
            timeout=120,
        )
        kind = node.succeed("kubectl -n kube-system get service traefik -o jsonpath='{.spec.type}'")
        t.assertEqual(kind.strip(), "ClusterIP")

    with subtest("two agents run, with the key from a Secret"):
        node.wait_until_succeeds("kubectl get namespace sni-edge", timeout=120)
        node.succeed(
            "kubectl -n sni-edge create secret generic sni-edge-agent-key"
            " --from-file=key=/etc/sni-edge-test/agent.key"
        )
        node.succeed(
            "kubectl create secret tls app-tls"
            " --cert=${certs}/server.pem --key=${certs}/server.key"
        )
        node.wait_until_succeeds("kubectl rollout status deployment whoami", timeout=300)
        node.wait_until_succeeds("kubectl -n sni-edge rollout status deployment sni-edge-agent", timeout=300)
        ready = node.succeed("kubectl -n sni-edge get deployment sni-edge-agent -o jsonpath='{.status.readyReplicas}'")
        t.assertEqual(ready.strip(), "2")

    ${common.whoamiSubtests {
      inherit certs;
      token = "token-tunnel";
    }}

    with subtest("with one agent gone, the other carries every connection"):
        pod = node.succeed(
            "kubectl -n sni-edge get pods -l app.kubernetes.io/name=sni-edge-agent"
            " -o jsonpath='{.items[0].metadata.name}'"
        ).strip()
        node.succeed(f"kubectl -n sni-edge delete pod {pod} --wait=true --timeout=60s")
        for _ in range(20):
            lines = client.succeed(https).splitlines()
            t.assertIn("X-Real-Ip: ${clientAddress}", lines)
  '';
}
