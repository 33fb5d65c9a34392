import t from 'tap'
import { TaskStream } from '../src/task-stream.js'
import type { TaskReport } from '../src/tasks.js'

function recorder (): { frames: string[], ends: string[], out: { write: (b: Buffer) => void, end: (b: Buffer) => void } } {
  const frames: string[] = []
  const ends: string[] = []
  return { frames, ends, out: { write: (b) => frames.push(b.toString()), end: (b) => ends.push(b.toString()) } }
}

const report = (over: Partial<TaskReport>): TaskReport => ({ name: 'task_updated', taskId: 't1', status: 'started', message: null, current: null, total: null, ...over })

t.test('starts from the hash, skips repeated progress, ends once with server_close', async (t) => {
  const { frames, ends, out } = recorder()
  const stream = new TaskStream('t1', { status: 'started', current: '1', total: '4', msg: 'copying' }, 2000, out)
  t.same(frames, ['event: task_updated\nretry: 2000\ndata: {"task_id":"t1","message":"copying","current_progress":1,"total_progress":4}\n\n'])
  stream.send(report({ message: 'copying', current: 1, total: 4 }))
  t.equal(frames.length, 1, 'the broadcast of the state already sent adds nothing')
  stream.send(report({ message: 'more', current: 2, total: 4 }))
  t.equal(frames.length, 2)
  stream.send(report({ name: 'bgtask_done', status: 'done', message: 'copied' }))
  t.same(ends, ['event: bgtask_done\nretry: 2000\ndata: {"task_id":"t1","message":"copied","current_progress":2,"total_progress":4}\n\nevent: server_close\ndata: {}\n\n'],
    'an end without progress keeps the progress last seen, under the name it was produced with')
  t.ok(stream.ended)
  stream.send(report({ current: 3, total: 4 }))
  stream.resync({ status: 'failed', current: '3', total: '4', msg: 'x' })
  t.equal(frames.length + ends.length, 3, 'nothing after the end')
})

t.test('a task already ended in its hash ends at once; a resync after a gap reports where it stands', async (t) => {
  const ended = recorder()
  const stream = new TaskStream('t2', { status: 'cancelled', current: 'n/a', total: '', msg: 'stopped' }, 500, ended.out)
  t.ok(stream.ended)
  t.same(ended.ends, ['event: task_cancelled\nretry: 500\ndata: {"task_id":"t2","message":"stopped","current_progress":"n/a","total_progress":""}\n\nevent: server_close\ndata: {}\n\n'])
  const live = recorder()
  const following = new TaskStream('t3', { status: 'started', current: '0', total: '2', msg: '' }, 500, live.out)
  following.resync({ status: 'done', current: '2', total: '2', msg: 'ok' })
  t.match(live.ends[0], /^event: task_done\n/)
})
