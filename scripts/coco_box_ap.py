#!/usr/bin/env python3
"""Person-box AP@0.5 on coco-mini val2017 from `wgpose predict --json` (README, "Finding people"):

  wgpose predict ../shared/data/coco-mini/val2017/*.jpg --det-threshold 0.05 --min-pose-score 0 --device cpu --json coco.json
  python3 scripts/coco_box_ap.py coco.json [ANNOTATIONS.json]

Detections are the `detection_box`es (tight boxes); crowd people and, per line, people under the
area limit are ignored regions (a detection on them is neither true nor false).
"""
import itertools
import json
import sys
ann=json.load(open(sys.argv[2] if len(sys.argv) > 2 else '../shared/data/coco-mini/annotations/person_keypoints_val2017.json'))
pred=json.load(open(sys.argv[1]))['people']
imgs={i['id']:i['file_name'] for i in ann['images']}
def iou(a,b):
    ax1,ay1,bx1,by1=a[0]+a[2],a[1]+a[3],b[0]+b[2],b[1]+b[3]
    iw=max(0,min(ax1,bx1)-max(a[0],b[0])); ih=max(0,min(ay1,by1)-max(a[1],b[1])); i=iw*ih
    return i/(a[2]*a[3]+b[2]*b[3]-i) if i>0 else 0
def ap(min_area):
    gts={}; ign={}
    for a in ann['annotations']:
        if a['category_id']!=1: continue
        f=imgs[a['image_id']]
        if a.get('iscrowd') or a['area']<min_area: ign.setdefault(f,[]).append(a['bbox'])
        else: gts.setdefault(f,[]).append(a['bbox'])
    dets=[]
    for k,v in pred.items():
        f=k.split('/')[-1]
        for p in v: dets.append((p['score'],f,p['detection_box']))
    dets.sort(key=lambda d:-d[0]); used={f:[False]*len(g) for f,g in gts.items()}
    npos=sum(len(g) for g in gts.values()); tp=[];fp=[]
    for s,f,b in dets:
        g=gts.get(f,[]); best=-1;bi=0.5
        for j,gb in enumerate(g):
            o=iou(b,gb)
            if o>=bi and not used[f][j]: bi=o;best=j
        if best>=0: used[f][best]=True; tp.append(1); fp.append(0)
        elif any(iou(b,gb)>=0.5 for gb in ign.get(f,[])): continue  # on an ignored region
        else: tp.append(0); fp.append(1)
    # AP (all-point interpolation)
    ctp=list(itertools.accumulate(tp)); cfp=list(itertools.accumulate(fp))
    rec=[c/npos for c in ctp]; prec=[c/(c+d) for c,d in zip(ctp,cfp)]
    for i in range(len(prec)-2,-1,-1): prec[i]=max(prec[i],prec[i+1])
    a=0;pr=0
    for r,p in zip(rec,prec): a+=(r-pr)*p; pr=r
    return a*100, (rec[-1]*100 if rec else 0), npos
for ma,name in [(0,'all'),(32**2,'area>=32^2'),(96**2,'area>=96^2')]:
    a,r,n=ap(ma); print(f'{name}: AP@0.5 {a:.1f} recall {r:.1f} ({n} people)')
