// IPv6 forms an outside attack got past the webhook guard, and their neighbours: the unit tests
// and the API tests both go through every one, as written here and in upper case.

/** IPv6 addresses a webhook must not reach, each a form that embeds or means a private target. */
export const unsafeIPv6 = [
  // IPv4-mapped ::ffff:0:0/96, dotted and hex (WHATWG URL turns the first into the second)
  '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:a9fe:a9fe', '0:0:0:0:0:ffff:10.0.0.1',
  // IPv4-compatible ::/96; a hostname can resolve to ::7f00:1
  '::127.0.0.1', '::7f00:1', '::a9fe:a9fe', '::10.0.0.1', '0:0:0:0:0:0:192.168.0.1',
  // SIIT, IPv4-translated ::ffff:0:0:0/96
  '::ffff:0:7f00:1', '::ffff:0:127.0.0.1', '::ffff:0:a9fe:a9fe',
  // NAT64 64:ff9b::/96, and the local-use 64:ff9b:1::/48 whatever it embeds
  '64:ff9b::7f00:1', '64:ff9b::127.0.0.1', '64:ff9b::a9fe:a9fe', '64:ff9b::a00:1',
  '64:ff9b:1::808:808', '64:ff9b:1:ffff::1',
  // 6to4 2002::/16
  '2002:7f00:1::', '2002:a9fe:a9fe::', '2002:a00:1::1', '2002:c0a8:101:1::1',
  // Teredo 2001::/32: private server (bits 32-63), or private client (last 32 bits, inverted)
  '2001:0:7f00:1::f7f7:f7f7', '2001:0:a9fe:a9fe:8000:63bf:f7f7:f7f7',
  '2001:0:808:808::80ff:fffe', '2001:0:808:808:8000:63bf:5601:5601', '2001:0:4136:e378:8000:63bf:3fff:fdd2',
  // site-local fec0::/10, documentation 3fff::/20, ORCHID 2001:10::/28, ORCHIDv2 2001:20::/28
  'fec0::1', 'fed0::1', 'feff:ffff::1', '3fff::1', '3fff:fff::1', '2001:10::1', '2001:1f::1', '2001:20::1', '2001:2f:ffff::1',
  // benchmarking 2001:2::/48, as 198.18.0.0/15 is for IPv4; segment routing 5f00::/16
  '2001:2::1', '2001:2:0:ffff::1', '5f00::1',
  // ISATAP, with a private IPv4 address in the interface id
  '2607:f8b0::5efe:127.0.0.1', '2001:db9:1:2:200:5efe:a00:1',
  // what was refused before
  '::1', '::', 'fe80::1', 'febf::1', 'fd00:ec2::254', 'fc00::1', 'ff02::1', '2001:db8::1', '100::1'
]

/** Public IPv6 addresses, some of them embedding a public IPv4 address: they stay allowed. */
export const publicIPv6 = [
  // ISATAP with a public IPv4 address
  '2607:f8b0::5efe:8.8.8.8',
  '2606:4700::1111', '2001:4860:4860::8888', '::ffff:8.8.8.8', '::ffff:808:808', '::ffff:0:808:808',
  '64:ff9b::808:808', '64:ff9b::8.8.8.8', '2002:808:808::', '2002:808:808:1::1',
  '2001:0:808:808::fefe:fefe', '2001:0:808:808:8000:63bf:fefe:fefe', '::808:808', '2a00:1450:4001:80e::200e'
]

/** Each address as given and in upper case. */
export function bothCases (addresses: string[]): string[] {
  return addresses.flatMap((a) => a.toUpperCase() === a ? [a] : [a, a.toUpperCase()])
}
