/**
 * A `*` glob list (`kernel_*,session_started`) as a matcher. No regular expression: a glob
 * with many stars would make a backtracking one take exponential time on a long name. Each
 * glob is matched in linear time: the fixed head and tail, then each middle part leftmost.
 */
export function globList (list: string): (value: string) => boolean {
  const globs = list.split(',').map((glob) => glob.split('*'))
  return (value) => globs.some((parts) => globMatches(parts, value))
}

function globMatches (parts: string[], value: string): boolean {
  const head = parts[0] as string
  if (parts.length === 1) return value === head
  const tail = parts[parts.length - 1] as string
  if (value.length < head.length + tail.length || !value.startsWith(head) || !value.endsWith(tail)) return false
  let at = head.length
  const end = value.length - tail.length
  for (let i = 1; i < parts.length - 1; i++) {
    const part = parts[i] as string
    const found = value.indexOf(part, at)
    if (found < 0 || found + part.length > end) return false
    at = found + part.length
  }
  return true
}
