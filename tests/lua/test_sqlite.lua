-- require 'sqlite' (reference/sqlite/open.md): the page's example with the
-- documented result shapes, named and positional parameters, a database
-- file shared by two connections, close, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'
local sqlite = require 'sqlite'

local db = sqlite.open ':memory:'
-- a statement that cannot return rows: the rows it changed (none)
utils.assert_eq(db:execute 'CREATE TABLE people (name, age)', 0)
utils.assert_eq(db:execute('INSERT INTO people (name, age) values (?, ?)', 'john', 42), 1)
utils.assert_eq(
  db:execute('INSERT INTO people (name, age) values (:name, :age)', { name = 'fred', age = 32 }),
  1
)
-- one column: an array of the values
utils.assert_eq(db:execute 'select age from people order by age', { 32, 42 })
-- several columns: an array of objects
utils.assert_eq(
  db:execute 'select * from people order by age',
  { { name = 'fred', age = 32 }, { name = 'john', age = 42 } }
)
-- the page prints the pairs of each row; the same through ipairs/pairs
local seen = {}
for k, v in ipairs(db:execute 'select * from people order by age') do
  for name, value in pairs(v) do
    seen[#seen + 1] = k .. ':' .. name .. '=' .. tostring(value)
  end
end
table.sort(seen)
utils.assert_eq(seen, { '1:age=32', '1:name=fred', '2:age=42', '2:name=john' })
-- "this will print 2"
utils.assert_eq(db:execute 'delete from people', 2)
-- a query that returns no rows is an empty list (it could return rows)
utils.assert_eq(db:execute 'select * from people', {})

-- types: integers, floats, text, NULL (a hole), blobs as strings
db:execute 'CREATE TABLE t (i, f, s, n)'
db:execute('INSERT INTO t VALUES (?, ?, ?, ?)', 7, 2.5, 'x\0y', nil)
local row = db:execute('SELECT i, f, s, n FROM t')[1]
assert(math.type(row.i) == 'integer' and row.i == 7)
assert(math.type(row.f) == 'float' and row.f == 2.5)
utils.assert_eq(row.s, 'x\0y')
assert(row.n == nil)
utils.assert_eq(db:execute("SELECT x'616263'"), { 'abc' })
-- one scalar parameter; a list table is positional
utils.assert_eq(db:execute('SELECT ? + 1', 41), { 42 })
utils.assert_eq(db:execute('SELECT ? || ?', { 'a', 'b' }), { 'ab' })

-- errors name the function, the parameter or the statement
utils.assert_error({ 'db:execute', 'syntax error', 'SELEKT 1' }, db.execute, db, 'SELEKT 1')
utils.assert_error({ 'db:execute', 'no such table: nope' }, db.execute, db, 'SELECT * FROM nope')
utils.assert_error(
  { 'db:execute', 'parameter 1', 'only numbers, strings and nil' },
  db.execute,
  db,
  'SELECT ?',
  true
)
utils.assert_error({ 'db:execute', 'parameter :b', 'only numbers' }, db.execute, db, 'SELECT :a', { b = {} })
utils.assert_error({ 'db:execute', 'binding parameter :zz', 'no such parameter' }, db.execute, db, 'SELECT :a', { zz = 1 })
utils.assert_error({ 'db:execute', 'binding parameter 2', 'no such parameter' }, db.execute, db, 'SELECT ?', 1, 2)
utils.assert_error({ 'db:execute', 'argument #1 (query) must be a string' }, db.execute, db, nil)
utils.assert_error({ 'db:execute', 'must be called as a method' }, db.execute, 'SELECT 1')
utils.assert_error({ 'sqlite.open', 'argument #1' }, sqlite.open, nil)
utils.assert_error({ 'sqlite.open', 'argument #2' }, sqlite.open, ':memory:', 'soon')
utils.assert_error({ 'sqlite.open', 'cannot open /nonexistent/dir/x.db' }, sqlite.open, '/nonexistent/dir/x.db')

-- close (2024.09.02): later queries fail
db:close()
utils.assert_error({ 'db:execute', 'connection was closed' }, db.execute, db, 'SELECT 1')
db:close() -- twice is harmless

-- a file shared by two connections, with the busy timeout given
local path = (os.getenv 'TMPDIR' or '/tmp') .. '/kumod-sqlite-' .. kumo.uuid.new_v4().simple .. '.db'
local a = sqlite.open(path, 1000)
local b = sqlite.open(path)
a:execute 'CREATE TABLE kv (k TEXT PRIMARY KEY, v)'
a:execute('INSERT INTO kv VALUES (:k, :v)', { k = 'x', v = 1 })
utils.assert_eq(b:execute('SELECT v FROM kv WHERE k = ?', 'x'), { 1 })
a:close()
b:close()
os.remove(path)

-- kumo.configure_accounting_db_path (the counts themselves: tests/e2e/test_accounting.py)
kumo.configure_accounting_db_path((os.getenv 'TMPDIR' or '/tmp') .. '/kumod-acct-unused.db')
utils.assert_error({ 'kumo.configure_accounting_db_path', 'argument #1' }, kumo.configure_accounting_db_path, nil)
utils.assert_error({ 'kumo.configure_accounting_db_path', 'non-empty' }, kumo.configure_accounting_db_path, '')
