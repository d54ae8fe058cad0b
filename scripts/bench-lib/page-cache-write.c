/*
 * page-cache-write FILE BS ITERS: what it costs to put BS bytes into page-cache pages of
 * FILE, per operation, by five means (docs/performance.md, "What limits the write goals";
 * trace scripts/bench-results/iops-cpu-profile-2026-12-05.txt). A measurement aid, not
 * part of the product: build with `cc -O2 -o page-cache-write page-cache-write.c`.
 *
 * FILE is created (1 GiB, sparse) and its first 128 MiB written once; then, 3 rounds of
 * ITERS operations cycling through those 128 MiB, each reported in microseconds:
 *   pwrite(dirty)          pwrite(2) over pages that are already dirty
 *   pvw(dirty)             process_vm_writev(2) to self into a MAP_SHARED mapping of FILE
 *   memcpy(dirty)          a user-space memcpy into that mapping
 *   copy_to_user-into-map  process_vm_readv(2) with the mapping as the local buffer: the
 *                          kernel's copy_to_user into it (what pread(2) into it would do)
 *   ... (after fdatasync)  the same right after fdatasync(2): the pages are clean and
 *                          write-protected again, as after a FLUSH
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
int main(int argc,char**argv){
  if(argc!=4){fprintf(stderr,"usage: %s FILE BS ITERS\n",argv[0]);return 2;}
  const char*path=argv[1]; size_t bs=atol(argv[2]); int iters=atoi(argv[3]); size_t ws=128<<20;
  if(bs==0||bs>ws||ws%bs){fprintf(stderr,"BS must divide 128 MiB\n");return 2;}
  int fd=open(path,O_RDWR|O_CREAT|O_TRUNC,0600);
  if(fd<0||ftruncate(fd,1<<30)){perror(path);return 1;}
  char*buf=aligned_alloc(4096,bs); memset(buf,0x5a,bs);
  /* prefill: whole working set written once (allocated, dirty) */
  for(size_t o=0;o<ws;o+=bs) if(pwrite(fd,buf,bs,o)!=(ssize_t)bs){perror("prefill");return 1;}
  char*map=mmap(0,1<<30,PROT_READ|PROT_WRITE,MAP_SHARED,fd,0);
  if(map==MAP_FAILED){perror("mmap");return 1;}
  pid_t me=getpid();
  for(int round=0;round<3;round++){
    double t0=now(); size_t o=0;
    for(int i=0;i<iters;i++){ if(pwrite(fd,buf,bs,o)!=(ssize_t)bs){perror("pwrite");return 1;} o=(o+bs)%ws; }
    double t1=now(); o=0;
    for(int i=0;i<iters;i++){ struct iovec l={buf,bs}, r={map+o,bs};
      if(process_vm_writev(me,&l,1,&r,1,0)!=(ssize_t)bs){perror("pvw");return 1;} o=(o+bs)%ws; }
    double t2=now(); o=0;
    for(int i=0;i<iters;i++){ memcpy(map+o,buf,bs); o=(o+bs)%ws; }
    double t3=now(); o=0;
    for(int i=0;i<iters;i++){ struct iovec l={map+o,bs}, r={buf,bs};
      if(process_vm_readv(me,&l,1,&r,1,0)!=(ssize_t)bs){perror("pvr");return 1;} o=(o+bs)%ws; }
    double t3b=now();
    /* after a writeback: pages clean + write-protected again */
    fdatasync(fd);
    double t4=now(); o=0;
    for(int i=0;i<iters;i++){ struct iovec l={buf,bs}, r={map+o,bs};
      if(process_vm_writev(me,&l,1,&r,1,0)!=(ssize_t)bs){perror("pvw");return 1;} o=(o+bs)%ws; }
    double t5=now();
    fdatasync(fd);
    double t5a=now(); o=0;
    for(int i=0;i<iters;i++){ struct iovec l={map+o,bs}, r={buf,bs};
      if(process_vm_readv(me,&l,1,&r,1,0)!=(ssize_t)bs){perror("pvr");return 1;} o=(o+bs)%ws; }
    double t5b=now();
    fdatasync(fd);
    double t6=now(); o=0;
    for(int i=0;i<iters;i++){ if(pwrite(fd,buf,bs,o)!=(ssize_t)bs){perror("pwrite");return 1;} o=(o+bs)%ws; }
    double t7=now();
    printf("bs=%zu iters=%d round %d: us/op pwrite(dirty) %.1f  pvw(dirty) %.1f  memcpy(dirty) %.1f  copy_to_user-into-map(dirty) %.1f  pvw(after fdatasync) %.1f  copy_to_user-into-map(after fdatasync) %.1f  pwrite(after fdatasync) %.1f\n",
      bs,iters,round,(t1-t0)/iters*1e6,(t2-t1)/iters*1e6,(t3-t2)/iters*1e6,(t3b-t3)/iters*1e6,(t5-t4)/iters*1e6,(t5b-t5a)/iters*1e6,(t7-t6)/iters*1e6);
    fflush(stdout);
  }
  return 0;
}
