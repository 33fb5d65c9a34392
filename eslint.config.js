import globals from 'globals'
import neostandard from 'neostandard'

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'node_modules/**', '.tap/**', 'coverage/**'] }),
  {
    // The dashboard's script runs in the browser.
    files: ['src/ui/**/*.js'],
    languageOptions: { globals: globals.browser }
  },
  {
    // A TypeBox schema and its Static<> type share one name by convention.
    files: ['schemas/**/*.ts'],
    rules: { '@typescript-eslint/no-redeclare': 'off' }
  }
]
