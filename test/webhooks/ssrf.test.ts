import t from 'tap'
import { checkWebhookUrl, guardedLookup, isPrivateAddress } from '../../src/webhooks/ssrf.js'

t.test('addresses a webhook may not reach', async (t) => {
  const privateOnes = ['127.0.0.1', '127.255.0.9', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254',
    '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fd00:ec2::254', 'fc00::1', 'ff02::1',
    '::ffff:127.0.0.1', '::ffff:10.0.0.1', '64:ff9b::7f00:1'.replace('7f00:1', '127.0.0.1'), 'not an ip']
  for (const a of privateOnes) t.ok(isPrivateAddress(a), a)
  for (const a of ['93.184.215.14', '8.8.8.8', '172.32.0.1', '2606:4700::1111', '::ffff:8.8.8.8']) t.notOk(isPrivateAddress(a), a)
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
  t.equal((await checkWebhookUrl('https://93.184.215.14/hook?x=1', false)).href, 'https://93.184.215.14/hook?x=1')
  t.equal((await checkWebhookUrl('http://127.0.0.1:8080/hook', true)).href, 'http://127.0.0.1:8080/hook', 'allowed by the operator')
})

t.test('the connect-time lookup refuses private answers', async (t) => {
  const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => guardedLookup('localhost', {}, (e) => resolve(e)))
  t.equal(err?.code, 'EBUSGATE_PRIVATE_ADDRESS')
})
