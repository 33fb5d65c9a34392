import { readFileSync } from 'node:fs'
import t from 'tap'
import { SETTINGS } from '../src/config.js'
import { Errors } from '../src/errors.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')

t.test('the README lists every setting with its flag and default', async (t) => {
  for (const s of SETTINGS) {
    const row = readme.split('\n').find((line) => line.startsWith(`| \`${s.env}\` |`))
    t.ok(row, `${s.env} has a row`)
    t.match(row, `\`--${s.flag}\``, `${s.env}: flag`)
    t.match(row, s.default === undefined ? '| unset |' : `| \`${s.default}\` |`, `${s.env}: default`)
  }
})

t.test('the README lists every error code', async (t) => {
  for (const BusgateError of Object.values(Errors)) {
    const code = (new BusgateError('x', 'y') as { code: string }).code
    t.match(readme, `\`${code}\``, code)
  }
})
