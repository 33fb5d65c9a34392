/** Most frames one produce takes: Lua's C stack holds about 8000 values, and one RPUSH takes them all. */
export const MAX_FRAMES_PER_PRODUCE = 5000
