# The systemd sandbox of both services (gateway and agent), after nixpkgs'
# rathole module: a dynamic user, no privileges beyond the listed
# capabilities, a read-only system, no devices, kernel knobs or namespaces,
# native system calls of @system-service only.
#
#   serviceConfig = import ./lib/hardening.nix { capabilities = [ ... ]; } // { ... };
{ capabilities }:

{
  DynamicUser = true;
  AmbientCapabilities = capabilities;
  # An empty list would leave the bounding set unset (all capabilities);
  # "" clears it.
  CapabilityBoundingSet = if capabilities == [ ] then [ "" ] else capabilities;
  NoNewPrivileges = true;
  LockPersonality = true;
  MemoryDenyWriteExecute = true;
  PrivateDevices = true;
  PrivateMounts = true;
  PrivateTmp = true;
  ProcSubset = "pid";
  ProtectClock = true;
  ProtectControlGroups = true;
  ProtectHome = true;
  ProtectHostname = true;
  ProtectKernelLogs = true;
  ProtectKernelModules = true;
  ProtectKernelTunables = true;
  ProtectProc = "invisible";
  ProtectSystem = "strict";
  RemoveIPC = true;
  # AF_UNIX: journald, nscd for DNS names, sd_notify.
  RestrictAddressFamilies = [
    "AF_INET"
    "AF_INET6"
    "AF_UNIX"
  ];
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  SystemCallArchitectures = "native";
  SystemCallFilter = [
    "@system-service"
    "~@privileged"
  ];
  UMask = "0077";
  # Two descriptors per relayed connection.
  LimitNOFILE = 1048576;
}
# PrivateUsers would break AmbientCapabilities=CAP_NET_BIND_SERVICE (rathole.nix
# says the same); a service without capabilities gets it.
// (if capabilities == [ ] then { PrivateUsers = true; } else { })
