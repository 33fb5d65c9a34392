import { writeFileSync } from 'node:fs'
import { buildApp } from './app.js'
import { defaultConfig } from './config.js'

/** The OpenAPI document as the route schemas describe it, with the default settings. */
export async function generateOpenApi (): Promise<string> {
  const app = await buildApp(defaultConfig(), { logger: false })
  try {
    await app.ready()
    return app.swagger({ yaml: true })
  } finally {
    await app.close()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const target = new URL('../openapi.yaml', import.meta.url)
  writeFileSync(target, await generateOpenApi())
  process.stdout.write(`wrote ${target.pathname}\n`)
}
