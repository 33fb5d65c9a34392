import { lookup } from 'node:dns/promises'
import { BlockList, isIP } from 'node:net'

// Where a webhook must not reach unless the operator allows it: this host, private networks,
// link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254), and the non-routable rest.
const blocked = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24],
  ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4]
] as const) blocked.addSubnet(net, prefix, 'ipv4')
for (const [net, prefix] of [
  ['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['2001:db8::', 32], ['100::', 64]
] as const) blocked.addSubnet(net, prefix, 'ipv6')

/** Whether an IP address is one a webhook may not reach (IPv4-mapped and NAT64 forms included). */
export function isPrivateAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) return blocked.check(address, 'ipv4')
  if (family !== 6) return true
  const lower = address.toLowerCase()
  const embedded = /^(?:::ffff:|64:ff9b::)(\d+\.\d+\.\d+\.\d+)$/.exec(lower)?.[1]
  if (embedded !== undefined) return blocked.check(embedded, 'ipv4')
  return blocked.check(lower, 'ipv6')
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
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
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
