import { lookup } from 'node:dns/promises'
import { BlockList, isIP } from 'node:net'

// Where a webhook must not reach unless the operator allows it: this host, private networks,
// link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254), and the non-routable rest.
const blocked = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24],
  ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4], ['192.88.99.0', 24]
] as const) blocked.addSubnet(net, prefix, 'ipv4')
// Site-local fec0::/10 is deprecated but still routed inside some networks; local-use NAT64
// 64:ff9b:1::/48 (RFC 8215) leads into the operator's own network whatever IPv4 address it
// carries; 3fff::/20 is documentation, 2001:10::/28 and 2001:20::/28 are ORCHID identifiers,
// 2001:2::/48 is benchmarking (IPv4's 198.18.0.0/15 is refused too), 5f00::/16 segment routing
// identifiers; 192.88.99.0/24 was the 6to4 relays' anycast.
for (const [net, prefix] of [
  ['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], ['ff00::', 8], ['2001:db8::', 32],
  ['100::', 64], ['64:ff9b:1::', 48], ['3fff::', 20], ['2001:10::', 28], ['2001:20::', 28], ['2001:2::', 48], ['5f00::', 16]
] as const) blocked.addSubnet(net, prefix, 'ipv6')

/** The eight 16-bit groups of an IPv6 address, or undefined when the text is not one. */
export function ipv6Groups (address: string): number[] | undefined {
  // A trailing dotted quad is the last two groups written another way.
  const quad = /(?<=:)\d+(?:\.\d+)+$/.exec(address)?.[0]
  let text = address
  if (quad !== undefined) {
    if (isIP(quad) !== 4) return undefined
    const [a = 0, b = 0, c = 0, d = 0] = quad.split('.').map(Number)
    text = `${address.slice(0, -quad.length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const halves = text.split('::')
  if (halves.length > 2) return undefined
  const [left = [], right = []] = halves.map((half) => half === '' ? [] : half.split(':'))
  if (![...left, ...right].every((group) => /^[\da-f]{1,4}$/i.test(group))) return undefined
  const missing = 8 - left.length - right.length
  // `::` stands for one zero group or more; without it, all eight are written out.
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined
  return [...left, ...Array<string>(missing).fill('0'), ...right].map((group) => parseInt(group, 16))
}

/**
 * The IPv4 addresses a packet to this IPv6 address ends up at, by the transition forms that
 * carry one: a gateway, a relay or the kernel unwraps them, so they are decided on the IPv4.
 */
function embeddedIPv4 (g: number[]): string[] {
  const v4 = (high: number, low: number): string => `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`
  const zero = (from: number, to: number): boolean => g.slice(from, to).every((group) => group === 0)
  if (zero(0, 5) && g[5] === 0xffff) return [v4(g[6]!, g[7]!)] // IPv4-mapped ::ffff:0:0/96
  if (zero(0, 6)) return [v4(g[6]!, g[7]!)] // IPv4-compatible ::/96
  if (zero(0, 4) && g[4] === 0xffff && g[5] === 0) return [v4(g[6]!, g[7]!)] // SIIT ::ffff:0:0:0/96
  if (g[0] === 0x64 && g[1] === 0xff9b && zero(2, 6)) return [v4(g[6]!, g[7]!)] // NAT64 64:ff9b::/96
  if (g[0] === 0x2002) return [v4(g[1]!, g[2]!)] // 6to4 2002::/16
  // Teredo 2001::/32: the server, and the client with its bits inverted; either may be inside.
  if (g[0] === 0x2001 && g[1] === 0) return [v4(g[2]!, g[3]!), v4(g[6]! ^ 0xffff, g[7]! ^ 0xffff)]
  // ISATAP: any prefix, an interface id of 0:5efe or 200:5efe and the IPv4 address.
  if ((g[4] === 0 || g[4] === 0x200) && g[5] === 0x5efe) return [v4(g[6]!, g[7]!)]
  return []
}

/** Whether an IP address is one a webhook may not reach, an IPv4 address inside IPv6 included. */
export function isPrivateAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) return blocked.check(address, 'ipv4')
  // A zone id only means something for a scoped (link-local) address.
  if (family !== 6 || address.includes('%')) return true
  const groups = ipv6Groups(address)
  if (groups === undefined) return true
  return embeddedIPv4(groups).some((v4) => blocked.check(v4, 'ipv4')) ||
    blocked.check(groups.map((group) => group.toString(16)).join(':'), 'ipv6')
}

/** The host of a URL as `isIP` and `lookup` want it: an IPv6 literal without its brackets. */
export function urlHost (url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1')
}

export class UnsafeUrlError extends Error {
  override name = 'UnsafeUrlError'
}

/**
 * Checks a webhook URL before it is stored: http(s) only, no credentials in it, and every
 * address its host resolves to public, unless private targets are allowed. The same check
 * runs again at connect time (see `guardedLookup`), so a DNS answer that changes later
 * (rebinding) does not get through either.
 */
export async function checkWebhookUrl (raw: string, allowPrivate: boolean): Promise<URL> {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new UnsafeUrlError('url is not a valid absolute URL')
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UnsafeUrlError('url must use http or https')
  if (url.username !== '' || url.password !== '') throw new UnsafeUrlError('url must not carry credentials; receivers verify the signature instead')
  if (url.hash !== '') throw new UnsafeUrlError('url must not have a fragment')
  if (allowPrivate) return url
  const host = urlHost(url)
  let addresses: string[]
  if (isIP(host) !== 0) {
    addresses = [host]
  } else {
    try {
      addresses = (await lookup(host, { all: true, verbatim: true })).map((a) => a.address)
    } catch {
      throw new UnsafeUrlError(`url host ${host} does not resolve`)
    }
  }
  if (addresses.some(isPrivateAddress)) {
    throw new UnsafeUrlError(`url host ${host} resolves to a loopback, private or link-local address (set BUSGATE_WEBHOOK_ALLOW_PRIVATE=true to allow it)`)
  }
  return url
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | Array<{ address: string, family: number }>, family?: number) => void

/** A `lookup` for sockets that refuses private addresses: what the connect-time guard uses. */
export function guardedLookup (hostname: string, options: { all?: boolean }, callback: LookupCallback): void {
  lookup(hostname, { all: true, verbatim: true }).then((found) => {
    const bad = found.find((a) => isPrivateAddress(a.address))
    if (bad !== undefined) {
      const err: NodeJS.ErrnoException = new Error(`${hostname} resolves to ${bad.address}, a private address; refused`)
      err.code = 'EBUSGATE_PRIVATE_ADDRESS'
      callback(err, '', 0)
      return
    }
    if (options.all === true) callback(null, found)
    else callback(null, found[0]?.address ?? '', found[0]?.family ?? 4)
  }, (err: NodeJS.ErrnoException) => callback(err, '', 0))
}
