-- kumo.fs and the deprecated kumo.glob / uncached_glob / read_dir: the
-- reference pages' examples on a scratch directory, caching, metadata, the
-- file object, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

local base = os.tmpname()
os.remove(base)
assert(os.execute('mkdir -p ' .. base .. '/etc/sub/deep ' .. base .. '/etc/.hidden'))
local function touch(p, content)
  local f = assert(io.open(base .. '/' .. p, 'w'))
  f:write(content or 'x')
  f:close()
end
touch 'etc/a.conf'
touch 'etc/b.conf'
touch 'etc/c.txt'
touch 'etc/sub/d.conf'
touch 'etc/sub/deep/e.lua'
touch 'etc/sub/deep/f.toml'
touch 'etc/.hidden/g.conf'

-- kumo.fs/glob.md: absolute names of the matches, sorted
utils.assert_eq(kumo.fs.glob(base .. '/etc/*.conf'), { base .. '/etc/a.conf', base .. '/etc/b.conf' })
utils.assert_eq(kumo.glob(base .. '/etc/*.conf'), { base .. '/etc/a.conf', base .. '/etc/b.conf' })
-- relative_to strips the prefix
utils.assert_eq(kumo.fs.glob(base .. '/etc/*.conf', base), { 'etc/a.conf', 'etc/b.conf' })
utils.assert_eq(kumo.fs.uncached_glob(base .. '/etc/*.conf', base .. '/etc/'), { 'a.conf', 'b.conf' })
-- "**" and {alternatives}, as in the config monitor's default glob; dot
-- directories are skipped
utils.assert_eq(kumo.fs.uncached_glob(base .. '/etc/**/*.{lua,toml}', base), { 'etc/sub/deep/e.lua', 'etc/sub/deep/f.toml' })
utils.assert_eq(kumo.fs.uncached_glob(base .. '/etc/**/*.conf', base), { 'etc/a.conf', 'etc/b.conf', 'etc/sub/d.conf' })
utils.assert_eq(kumo.fs.uncached_glob(base .. '/etc/?.txt', base), { 'etc/c.txt' })
utils.assert_eq(kumo.fs.uncached_glob(base .. '/etc/[ab].conf', base), { 'etc/a.conf', 'etc/b.conf' })
-- missing or unreadable directories are omitted silently
utils.assert_eq(kumo.fs.glob(base .. '/nonexistent/*.conf'), {})
-- relative patterns stay relative (the test runs in tests/lua)
local rel = kumo.fs.uncached_glob 'test_fs.lu?'
utils.assert_eq(rel, { 'test_fs.lua' })

-- the cache: a new file is not seen until the TTL passes; uncached sees it
utils.assert_eq(#kumo.fs.glob(base .. '/etc/*.txt', '.', 0.2), 1)
touch 'etc/z.txt'
utils.assert_eq(#kumo.fs.glob(base .. '/etc/*.txt', '.', 0.2), 1)
utils.assert_eq(#kumo.fs.uncached_glob(base .. '/etc/*.txt'), 2)
kumo.sleep(0.25)
utils.assert_eq(#kumo.fs.glob(base .. '/etc/*.txt', '.', 0.2), 2)
-- callers may change the array they get without changing the cache
local g = kumo.fs.glob(base .. '/etc/*.txt')
g[1] = 'changed'
assert(kumo.fs.glob(base .. '/etc/*.txt')[1] ~= 'changed')

-- kumo.fs/read_dir.md
utils.assert_eq(kumo.fs.read_dir(base .. '/etc/sub'), { base .. '/etc/sub/d.conf', base .. '/etc/sub/deep' })
utils.assert_eq(kumo.read_dir(base .. '/etc/sub/'), { base .. '/etc/sub/d.conf', base .. '/etc/sub/deep' })
utils.assert_error({ 'kumo.fs.read_dir', 'No such file' }, kumo.fs.read_dir, base .. '/nope')

-- kumo.fs/metadata_for_path.md and symlink_metadata_for_path.md
assert(os.execute('ln -s a.conf ' .. base .. '/etc/link.conf'))
local m = kumo.fs.metadata_for_path(base .. '/etc/link.conf')
utils.assert_eq(m.path, base .. '/etc/link.conf')
assert(m.is_file and not m.is_dir and not m.is_symlink)
utils.assert_eq(m.len, 1)
utils.assert_eq(m.size, 1)
assert(m.readonly == false)
assert(math.abs(m.mtime.unix_timestamp - os.time()) < 60, 'mtime is a Time: ' .. tostring(m.mtime))
assert(m.mtime.rfc2822 and m.atime and m.ctime and m.ino and m.dev and m.mode and m.nlink and m.uid and m.gid and m.blksize and m.blocks and m.rdev)
local lm = kumo.fs.symlink_metadata_for_path(base .. '/etc/link.conf')
assert(lm.is_symlink and not lm.is_file)
assert(kumo.fs.metadata_for_path(base .. '/etc').is_dir)
local ok, err = pcall(kumo.fs.metadata_for_path, '/tmp/nonexistent-kumod-file')
assert(not ok and err:find('kumo.fs.metadata_for_path', 1, true) and err:find('No such file', 1, true), err)

-- kumo.fs/open.md
local path = base .. '/somefile.txt'
local file = kumo.fs.open(path, 'w')
file:write 'hello there'
file:seek 'set'
utils.assert_error({ 'file:read' }, file.read, file) -- opened write-only
file:close()
file = kumo.fs.open(path, 'w+')
file:write 'hello there'
utils.assert_eq(file:seek 'set', 0)
assert(file:read() == 'hello there')
utils.assert_eq(file:seek(), 11)
utils.assert_eq(file:seek('set', 6), 6)
utils.assert_eq(file:read(3), 'the')
utils.assert_eq(file:seek('cur', -3), 6)
utils.assert_eq(file:seek 'end', 11)
utils.assert_eq(file:read(), '')
file:flush()
file:close()
utils.assert_error('closed', file.read, file)
-- append and r (the default mode); binary data round-trips
file = kumo.fs.open(path, 'ab')
file:write '\0\xff'
file:close()
file = kumo.fs.open(path)
utils.assert_eq(file:read(), 'hello there\0\xff')
file:close()
-- a file larger than one chunk (1 MiB) is read and written in pieces
local big = string.rep('0123456789abcdef', 200000) -- 3.2 MB
file = kumo.fs.open(path, 'w+')
file:write(big)
file:seek 'set'
local back = file:read()
utils.assert_eq(#back, #big)
assert(back == big)
file:close()
do
  local scoped <close> = kumo.fs.open(path)
  utils.assert_eq(#scoped:read(10), 10)
end

-- errors
utils.assert_error({ 'kumo.fs.open', 'No such file' }, kumo.fs.open, base .. '/no/such/file')
utils.assert_error({ 'kumo.fs.open', 'OPT_MODE' }, kumo.fs.open, path, 'rw')
utils.assert_error({ 'kumo.fs.open', 'FILENAME' }, kumo.fs.open, 42)
utils.assert_error({ 'kumo.fs.glob', 'pattern' }, kumo.fs.glob, nil)
utils.assert_error({ 'kumo.glob', 'pattern' }, kumo.glob, {})
utils.assert_error({ 'file:write', 'BUFFER' }, kumo.fs.open(path, 'w').write, kumo.fs.open(path, 'w'), {})
utils.assert_error({ 'file:seek', 'OPT_WHENCE' }, kumo.fs.open(path).seek, kumo.fs.open(path), 'middle')
utils.assert_error({ 'kumo.fs.glob', 'alternatives' }, kumo.fs.glob, string.rep('{a,b}', 12))
-- invalid UTF-8 in a pattern is just a pattern that matches nothing
utils.assert_eq(kumo.fs.uncached_glob(base .. '/\xff\xfe*'), {})

os.execute('rm -rf ' .. base)
