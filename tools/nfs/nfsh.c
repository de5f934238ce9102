/* nfsh: hold one NFS file handle across server-side events.
 *
 * usage: nfsh 'nfs://127.0.0.1/export/path/file?version=3'
 *        nfsh -put LOCAL CHUNK URL   (create URL, write LOCAL in CHUNK-byte WRITEs)
 *        nfsh -mkdir 'nfs://127.0.0.1/export/path/newdir?version=3'   (mkdir, then exit)
 * Mounts the export, opens the file (this is the only LOOKUP by name), then
 * reads commands from stdin, one per line, and answers one line each:
 *   fstat        GETATTR on the held file handle      -> "ok ino=.. size=.. mode=.." | "err <errno> <msg>"
 *   read OUT     READ the whole file via the held fh into local file OUT -> "ok <bytes>" | "err ..."
 *   stat         fresh path lookup + GETATTR           -> "ok ..." | "err ..."
 *   quit
 * Every later access uses the file handle obtained at start, so the server
 * must resolve it again (FSAL_VFS: open_by_handle_at) after caches were
 * dropped, the server restarted or the exported filesystem remounted.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <nfsc/libnfs.h>

static struct nfs_context *nfs;

/* libnfs keeps the wire file handle as the first member of struct nfsfh:
 * { u_int len; char *val; } (libnfs-private.h; same layout in 4.x/5.x). */
struct fh_head { unsigned int len; char *val; };
static unsigned int saved_len;
static char saved_val[128];

static void print_fh(void) {
	printf("ok fh len=%u ", saved_len);
	for (unsigned i = 0; i < saved_len; i++) printf("%02x", (unsigned char)saved_val[i]);
	printf("\n");
}

static void pr_err(int rc) {
	printf("err %d %s | %s\n", -rc, strerror(-rc), nfs_get_error(nfs));
}

static void pr_st(struct nfs_stat_64 *st) {
	printf("ok ino=%llu size=%llu mode=%llo nlink=%llu uid=%llu gid=%llu mtime=%llu\n",
	       (unsigned long long)st->nfs_ino, (unsigned long long)st->nfs_size,
	       (unsigned long long)st->nfs_mode, (unsigned long long)st->nfs_nlink,
	       (unsigned long long)st->nfs_uid, (unsigned long long)st->nfs_gid,
	       (unsigned long long)st->nfs_mtime);
}

/* Every context gets an NFSv4 client name of its own. libnfs's default is "Libnfs pid:P
 * SECONDS": a second context made in the same second (refstat) has the same name, and the
 * server takes its SETCLIENTID for a restart of the first client and expires the first's open
 * state (NFS4ERR_EXPIRED on the held handle's next READ, depending on timing). */
static void name_client(struct nfs_context *n) {
	static int contexts;
	char name[64];
	snprintf(name, sizeof name, "nfsh pid:%d ctx:%d", (int)getpid(), ++contexts);
	nfs4_set_client_name(n, name);
}

int main(int argc, char **argv) {
	int mk = argc == 3 && !strcmp(argv[1], "-mkdir");
	if (mk) { argv++; argc--; }
	/* -put LOCAL CHUNK URL: create/truncate URL and write LOCAL into it in CHUNK-byte writes */
	const char *put = NULL; int chunk = 0;
	if (argc == 5 && !strcmp(argv[1], "-put")) { put = argv[2]; chunk = atoi(argv[3]); argv += 3; argc -= 3; }
	if (argc != 2) { fprintf(stderr, "usage: nfsh [-mkdir] URL\n"); return 2; }
	setvbuf(stdout, NULL, _IOLBF, 0);
	nfs = nfs_init_context();
	if (!nfs) { fprintf(stderr, "init failed\n"); return 1; }
	name_client(nfs);
	nfs_set_timeout(nfs, 20000);
	nfs_set_autoreconnect(nfs, -1);
	const char *url_arg = argv[1];
	struct nfs_url *url = nfs_parse_url_full(nfs, argv[1]);
	if (!url) { fprintf(stderr, "bad url: %s\n", nfs_get_error(nfs)); return 2; }
	int rc = nfs_mount(nfs, url->server, url->path);
	if (rc) { printf("mount "); pr_err(rc); return 1; }
	if (mk) {
		rc = nfs_mkdir(nfs, url->file);
		if (rc) { printf("mkdir "); pr_err(rc); return 1; }
		return 0;
	}
	struct nfsfh *fh = NULL;
	if (put) {
		FILE *in = fopen(put, "rb");
		if (!in) { printf("put: %s: %s\n", put, strerror(errno)); return 1; }
		rc = nfs_open2(nfs, url->file, O_WRONLY | O_CREAT | O_TRUNC, 0644, &fh);
		if (rc == -EEXIST) /* libnfs 4.0 NFSv4 creates exclusively; reuse the (empty) file */
			rc = nfs_open(nfs, url->file, O_WRONLY | O_TRUNC, &fh);
		if (rc) { printf("creat "); pr_err(rc); return 1; }
		static char buf[1 << 20];
		if (chunk <= 0 || chunk > (int)sizeof buf) chunk = 65536;
		uint64_t off = 0; size_t n;
		while ((n = fread(buf, 1, chunk, in)) > 0) {
			rc = nfs_pwrite(nfs, fh, off, n, buf);
			if (rc < 0) { printf("pwrite at %llu ", (unsigned long long)off); pr_err(rc); return 1; }
			if ((size_t)rc != n) { printf("short write at %llu: %d of %zu\n", (unsigned long long)off, rc, n); return 1; }
			off += n;
		}
		fclose(in);
		rc = nfs_close(nfs, fh);
		if (rc) { printf("close "); pr_err(rc); return 1; }
		return 0;
	}
	rc = nfs_open(nfs, url->file, O_RDONLY, &fh);
	if (rc) { printf("open "); pr_err(rc); return 1; }
	{
		struct fh_head *h = (struct fh_head *)fh;
		saved_len = h->len < sizeof saved_val ? h->len : 0;
		memcpy(saved_val, h->val, saved_len);
	}
	printf("ready\n");
	char line[4096];
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\r\n")] = 0;
		struct nfs_stat_64 st;
		if (!strcmp(line, "quit")) break;
		if (!strcmp(line, "fh")) {
			print_fh();
		} else if (!strncmp(line, "refstat ", 8)) {
			/* "refstat ANCHOR": new client context (new connection, new
			 * NFSv4 client id), open ANCHOR (an existing file), then swap
			 * in the file handle saved at start and GETATTR it.  Tests
			 * the old handle against a restarted server even where
			 * libnfs cannot recover NFSv4 state. */
			struct nfs_context *n2 = nfs_init_context();
			struct nfsfh *a = NULL;
			name_client(n2);
			nfs_set_timeout(n2, 20000);
			rc = -EINVAL;
			struct nfs_url *u2 = nfs_parse_url_full(n2, url_arg); /* applies ?version= */
			if (u2) nfs_destroy_url(u2);
			if (u2 && 
			    (rc = nfs_mount(n2, url->server, url->path)) == 0 &&
			    (rc = nfs_open(n2, line + 8, O_RDONLY, &a)) == 0) {
				struct fh_head *h = (struct fh_head *)a, keep = *h;
				h->len = saved_len; h->val = saved_val;
				struct nfs_context *o = nfs; nfs = n2;
				rc = nfs_fstat64(n2, a, &st);
				if (rc) pr_err(rc); else pr_st(&st);
				nfs = o;
				*h = keep;
				nfs_close(n2, a);
			} else {
				struct nfs_context *o = nfs; nfs = n2; printf("refstat setup "); pr_err(rc); nfs = o;
			}
			nfs_destroy_context(n2);
		} else if (!strcmp(line, "fstat")) {
			rc = nfs_fstat64(nfs, fh, &st);
			if (rc) pr_err(rc); else pr_st(&st);
		} else if (!strcmp(line, "stat")) {
			rc = nfs_stat64(nfs, url->file, &st);
			if (rc) pr_err(rc); else pr_st(&st);
		} else if (!strncmp(line, "read ", 5)) {
			FILE *out = fopen(line + 5, "wb");
			if (!out) { printf("err local %s\n", strerror(errno)); continue; }
			static char buf[65536];
			uint64_t off = 0;
			for (;;) {
				rc = nfs_pread(nfs, fh, off, sizeof buf, buf);
				if (rc <= 0) break;
				fwrite(buf, 1, rc, out);
				off += rc;
			}
			fclose(out);
			if (rc < 0) pr_err(rc); else printf("ok %llu\n", (unsigned long long)off);
		} else {
			printf("err unknown command\n");
		}
	}
	nfs_close(nfs, fh);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return 0;
}
