import t from 'tap'
import { checkWebhookUrl, guardedLookup, ipv6Groups, isPrivateAddress } from '../../src/webhooks/ssrf.js'
import { bothCases, publicIPv6, unsafeIPv6 } from '../helpers/unsafe-addresses.js'

t.test('addresses a webhook may not reach', async (t) => {
  const privateOnes = ['127.0.0.1', '127.255.0.9', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254',
    '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fd00:ec2::254', 'fc00::1', 'ff02::1',
    '::ffff:127.0.0.1', '::ffff:10.0.0.1', '64:ff9b::127.0.0.1', '192.88.99.1', 'not an ip']
  for (const a of privateOnes) t.ok(isPrivateAddress(a), a)
  for (const a of ['93.184.215.14', '8.8.8.8', '172.32.0.1', '2606:4700::1111', '::ffff:8.8.8.8']) t.notOk(isPrivateAddress(a), a)
})

t.test('IPv6 forms are decided on the IPv4 address they embed, and on their own range', async (t) => {
  for (const a of bothCases(unsafeIPv6)) t.ok(isPrivateAddress(a), `${a} refused`)
  for (const a of bothCases(publicIPv6)) t.notOk(isPrivateAddress(a), `${a} allowed`)
})

t.test('the IPv6 parser', async (t) => {
  const cases: Array<[string, number[]]> = [
    ['::', [0, 0, 0, 0, 0, 0, 0, 0]],
    ['::1', [0, 0, 0, 0, 0, 0, 0, 1]],
    ['1::', [1, 0, 0, 0, 0, 0, 0, 0]],
    ['1:2:3:4:5:6:7::', [1, 2, 3, 4, 5, 6, 7, 0]],
    ['::2:3:4:5:6:7:8', [0, 2, 3, 4, 5, 6, 7, 8]],
    ['FE80::AbCd:1', [0xfe80, 0, 0, 0, 0, 0, 0xabcd, 1]],
    ['2001:db8:0:0:1:0:0:1', [0x2001, 0xdb8, 0, 0, 1, 0, 0, 1]],
    ['::ffff:127.0.0.1', [0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]],
    ['1:2:3:4:5:6:192.168.0.1', [1, 2, 3, 4, 5, 6, 0xc0a8, 1]],
    ['::1.2.3.4', [0, 0, 0, 0, 0, 0, 0x102, 0x304]]
  ]
  for (const [text, groups] of cases) t.same(ipv6Groups(text), groups, text)
  for (const text of ['', ':', ':::', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', '1::2::3', ':1::', '1::2:', '12345::', 'g::',
    '1:2:3:4:5:6:7:1.2.3.4', '::1.2.3', '::1.2.3.256', '1.2.3.4', '::ffff:1.2.3.4:1', 'fe80::1%eth0', '::1 ']) {
    t.equal(ipv6Groups(text), undefined, JSON.stringify(text))
  }
})

t.test('zone ids and malformed IPv6 strings are refused', async (t) => {
  const refused = ['fe80::1%eth0', 'FE80::1%ETH0', 'fe80::1%1', '2606:4700::1111%eth0', '1:2::3:4::5', ':::1', '1:2:3:4:5:6:7:8:9',
    '1:2:3:4:5:6:7', '12345::1', '::ffff:256.1.1.1', '::ffff:1.2.3', '::1.2.3.4:5', 'g::1', '', '[::1]', '2606:4700::1111%']
  for (const a of refused) t.ok(isPrivateAddress(a), JSON.stringify(a))
})

t.test('a hostname answer is decided the same way as a literal', async (t) => {
  // No name this machine resolves gives ::7f00:1 (no DNS here, and /etc/hosts is not ours to
  // edit), so what a lookup would hand over is checked directly; guardedLookup and
  // checkWebhookUrl refuse as soon as one of the answers is private.
  for (const a of ['::7f00:1', '::ffff:7f00:1', '64:ff9b::a9fe:a9fe', '2002:7f00:1::']) t.ok(isPrivateAddress(a), a)
  await t.rejects(checkWebhookUrl('http://localhost/hook', false), { name: 'UnsafeUrlError' }, 'localhost: 127.0.0.1 and ::1')
})

t.test('webhook URLs: refused and accepted', async (t) => {
  const refused: Array<[string, RegExp]> = [
    ['http://127.0.0.1:8080/hook', /loopback, private or link-local/],
    ['http://localhost/hook', /loopback, private or link-local/],
    ['http://[::1]/hook', /loopback/],
    ['http://169.254.169.254/latest/meta-data', /link-local/],
    ['http://10.0.0.5/', /private/],
    ['ftp://93.184.215.14/', /http or https/],
    ['https://user:pw@93.184.215.14/', /credentials/],
    ['https://93.184.215.14/#frag', /fragment/],
    ['not a url', /not a valid absolute URL/]
  ]
  for (const [url, message] of refused) await t.rejects(checkWebhookUrl(url, false), { name: 'UnsafeUrlError', message }, url)
  for (const a of bothCases(unsafeIPv6)) {
    const url = `http://[${a}]/hook`
    await t.rejects(checkWebhookUrl(url, false), { name: 'UnsafeUrlError', message: /loopback, private or link-local/ }, url)
  }
  await t.rejects(checkWebhookUrl('http://[fe80::1%25eth0]/hook', false), { name: 'UnsafeUrlError' }, 'a zone id is no URL host')
  for (const a of bothCases(publicIPv6)) {
    const url = `http://[${a}]/hook`
    t.equal((await checkWebhookUrl(url, false)).hostname, new URL(url).hostname, `${url} accepted`)
  }
  t.equal((await checkWebhookUrl('https://93.184.215.14/hook?x=1', false)).href, 'https://93.184.215.14/hook?x=1')
  t.equal((await checkWebhookUrl('http://127.0.0.1:8080/hook', true)).href, 'http://127.0.0.1:8080/hook', 'allowed by the operator')
})

t.test('the connect-time lookup refuses private answers', async (t) => {
  const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => guardedLookup('localhost', {}, (e) => resolve(e)))
  t.equal(err?.code, 'EBUSGATE_PRIVATE_ADDRESS')
})
